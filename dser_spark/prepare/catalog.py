"""The item catalogue: items keyed by source id, and the ``items`` table built from it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from dser_spark.prepare.lines import BAD_ID, DUPLICATE_ID, ReadLog
from dser_spark.prepare.locate import SourceFile

_STRINGS = T.ArrayType(T.StringType())
ITEMS_SCHEMA = T.StructType([
    T.StructField("item_id", T.IntegerType()), T.StructField("title", T.StringType()),
    T.StructField("year", T.IntegerType()), T.StructField("genres", _STRINGS),
    T.StructField("keywords", _STRINGS), T.StructField("cast", _STRINGS),
    T.StructField("directors", _STRINGS), T.StructField("overview", T.StringType()),
    T.StructField("tmdb_id", T.IntegerType()), T.StructField("imdb_id", T.StringType()),
    T.StructField("raw_id", T.StringType()),
])
ITEM_FIELDS = ("title", "year", "genres", "keywords", "cast", "directors", "overview",
               "tmdb_id", "imdb_id")


@dataclass
class Catalog:
    """Items keyed by the source id (int, or str for string-id RecBole sets)."""

    items: dict[int | str, dict[str, Any]]
    tokens: bool = False


def make_item(**fields: Any) -> dict[str, Any]:
    """An item with every field of ``ITEM_FIELDS``; the ones not given are None."""
    return {name: fields.get(name) for name in ITEM_FIELDS}


def add_item(catalog: dict, key: int | str | None, item: dict, path: SourceFile, line: int,
             raw: str, log: ReadLog) -> None:
    """Add ``item`` under ``key``; a missing or repeated id rejects the line instead."""
    if key is None:
        log.reject(path, line, raw, BAD_ID)
    elif key in catalog:
        log.reject(path, line, raw, DUPLICATE_ID)
    else:
        catalog[key] = item


def rated_catalog(good: DataFrame, item_keys: dict[str, int] | None,
                  build: Callable[[list[int]], Catalog] | None) -> Catalog:
    """Items for sources without a catalogue file: the movies that have good ratings."""
    rated = sorted(r[0] for r in good.select("item_id").distinct().collect())
    if item_keys is not None:  # string ids: back to the raw tokens
        raw = {v: k for k, v in item_keys.items()}
        return Catalog({raw[i]: make_item() for i in rated}, tokens=True)
    return build(rated)


def items_frame(spark: SparkSession, catalog: Catalog, item_keys: dict[str, int] | None) -> DataFrame:
    """The items table: source ids, or dense ids with the raw string kept in ``raw_id``."""
    rows = []
    for key, item in catalog.items.items():
        item_id, raw = (item_keys[key], key) if catalog.tokens else (key, None)
        rows.append((item_id, *(item[f] for f in ITEM_FIELDS), raw))
    return spark.createDataFrame(sorted(rows, key=lambda r: r[0]), ITEMS_SCHEMA)
