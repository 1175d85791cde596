"""Your own events (``data.format: table | parquet | csv``), read through the ``data.columns`` mapping.

Everything runs on the executors in Spark SQL:

* the source: a catalog table (``data.table``), or a directory of Parquet or
  CSV files (``data.path``; CSV: a header line per file, one record per line).
  Each row keeps where it came from: ``source`` (the table, or the file) and
  ``line`` (the row's 1-based position in its file, the physical line in CSV;
  for a table not backed by files, Spark's row id);
* each mapped field is parsed; a row whose user or item is missing, whose
  rating is not a number or whose time does not parse (``data.ts_unit``) goes
  to ``rejected_rows`` with its mapped fields as JSON (CSV: the line), and a
  source whose rejected share exceeds ``data.max_reject_fraction`` fails;
* several events of one (user, item) become one interaction: the latest
  event's rating and time, and ``count`` events (``rating`` 1 when unmapped);
* ids keep their source type (string, 64-bit, ...) in the ``user_ids`` /
  ``item_ids`` tables (``user_id int`` / ``item_id int``, ``source_id``);
  every other table uses those dense ids. Ids are never reassigned: a night
  keeps the previous map and numbers new ids after the largest, in source-id
  order, so stored models stay valid. Published recommendations carry the
  source ids again.

Optional item metadata (``data.items``, ``data.item_columns``) fills the
``items`` table's title, genres (``categories``) and overview (``text``),
which feed the content Doc2Vec as MovieLens titles and genres do; items
without metadata are in ``items`` with nulls.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dser_spark import tables
from dser_spark.config import Config, DataConfig
from dser_spark.prepare.catalog import ITEMS_SCHEMA
from dser_spark.prepare.errors import DataError
from dser_spark.prepare.lines import DUPLICATE_ID, NON_NUMERIC_RATING
from dser_spark.prepare.locate import SourceFile, open_source_dir, to_uri
from dser_spark.prepare.prepared import Prepared
from dser_spark.prepare.ratings import _MAX_UNIX_SECONDS, REJECTED_SCHEMA, _numbered_lines

log = logging.getLogger("dser_spark")

MISSING_USER = "missing user id"
MISSING_ITEM = "missing item id"
SOURCE, LINE, RAW = "_source", "_line", "_raw"
MS_THRESHOLD = 1e11  # auto: epoch numbers above this are milliseconds (1e11 s is the year 5138)
_INTEGER = r"^-?\d{1,18}$"


def bad_timestamp(unit: str) -> str:
    """Reason for a time that does not parse as ``unit``."""
    return {"s": "bad timestamp (expected epoch seconds)", "ms": "bad timestamp (expected epoch milliseconds)",
            "timestamp": "bad timestamp (expected a timestamp)"}[unit]


@dataclass
class OwnSource:
    """A source read with its provenance columns: ``source``, ``line``, ``raw`` beside its own."""

    frame: DataFrame
    name: str            # for messages: the table or the directory
    columns: list[str]   # the source's own columns


# ------------------------------------------------------------------ reading
def read_source(spark: SparkSession, fmt: str, where: str, sep: str = ",") -> OwnSource:
    """The events or the metadata: a catalog table, a Parquet directory or a CSV directory."""
    if fmt == "table":
        return _read_table(spark, where)
    if fmt == "parquet":
        return _read_parquet(spark, where)
    return _read_csv(spark, where, sep)


def _json(df: DataFrame) -> Column:
    """The row's columns as JSON, nulls included (the ``raw`` of a rejected row)."""
    return F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]), {"ignoreNullFields": "false"})


def _with_file_rows(df: DataFrame, prefix: str) -> DataFrame:
    """``source`` = ``prefix`` + the file's name, ``line`` = 1-based row in the file (Parquet's row index)."""
    raw = _json(df)
    return df.select("*", F.concat(F.lit(prefix), F.col("_metadata.file_name")).alias(SOURCE),
                     (F.col("_metadata.row_index") + 1).alias(LINE), raw.alias(RAW))


def _read_table(spark: SparkSession, name: str) -> OwnSource:
    try:
        df = spark.table(name)
    except AnalysisException as exc:
        raise DataError(f"data.table {name!r}: cannot read it ({str(exc).splitlines()[0]})") from None
    try:
        frame = _with_file_rows(df, f"{name}/")
        frame.schema  # noqa: B018 - analysed now: tables not backed by Parquet files have no row index
    except AnalysisException:
        raw = _json(df)
        frame = df.select("*", F.lit(name).alias(SOURCE), (F.monotonically_increasing_id() + 1).alias(LINE),
                          raw.alias(RAW))
    return OwnSource(frame, name, list(df.columns))


def _read_parquet(spark: SparkSession, path: str) -> OwnSource:
    root = open_source_dir(spark, path)
    try:
        df = spark.read.parquet(root.uri)
        df.schema  # noqa: B018
    except AnalysisException as exc:
        raise DataError(f"data.path {path!r}: cannot read it as Parquet ({str(exc).splitlines()[0]})") from None
    return OwnSource(_with_file_rows(df, ""), path, list(df.columns))


def _csv_files(spark: SparkSession, path: str) -> list[SourceFile]:
    root = open_source_dir(spark, path)
    files = [f for f in root.glob("*") if not f.name.startswith(("_", "."))]
    if not files:
        raise DataError(f"data.path {path!r}: no CSV files in {root}")
    return files


def _header(path: SourceFile, sep: str) -> list[str]:
    line = path.read_first_line().decode("utf-8-sig", errors="replace").rstrip("\r\n")
    header = [h.strip() for h in next(csv.reader([line], delimiter=sep))] if line.strip() else []
    if not header or any(not h for h in header):
        raise DataError(f"{path.name} line 1: expected a header naming the columns, found {line!r}")
    return header


def _read_csv(spark: SparkSession, path: str, sep: str) -> OwnSource:
    """Every file's lines with their physical line numbers, parsed with the (shared) header; all strings."""
    files = _csv_files(spark, path)
    header = _header(files[0], sep)
    frames = []
    for file in files:
        found = _header(file, sep)
        if found != header:
            raise DataError(f"{file.name} line 1: header {found} differs from {files[0].name}'s {header}")
        lines, _ = _numbered_lines(spark, file)
        schema = ", ".join(f"`{c}` string" for c in header)
        parsed = F.from_csv("value", schema, {"sep": sep, "mode": "PERMISSIVE"})
        frames.append(lines.filter((F.col("line") > 1) & (F.trim("value") != ""))
                      .select(parsed.alias("r"), F.lit(file.name).alias(SOURCE), F.col("line").alias(LINE),
                              F.col("value").alias(RAW))
                      .select(*[F.col("r")[c].alias(c) for c in header], SOURCE, LINE, RAW))
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.unionByName(other)
    return OwnSource(frame, path, header)


def mapped_column(source: OwnSource, mapping: dict[str, str], key: str, what: str) -> Column:
    """The source column that ``data.<what>.<key>`` names; DataError naming the source's columns if absent."""
    name = mapping[key]
    if name not in source.columns:
        raise DataError(f"data.{what}.{key}: column {name!r} is not in {source.name} (its columns: "
                        f"{', '.join(source.columns)})")
    return F.col(f"`{name}`")


# ------------------------------------------------------------------ fields
def _field_type(frame: DataFrame, col: Column) -> T.DataType:
    return frame.select(col).schema.fields[0].dataType


def _id(col: Column, kind: str) -> Column:
    """An id as ``kind``: ``string`` trimmed (empty = missing), else the integer type (null if it is not one)."""
    if kind == "string":
        text = F.trim(col.cast("string"))
        return F.when(text != "", text)
    return col.try_cast(kind)


def _id_kind(dtype: T.DataType, all_integers: bool | None) -> str:
    """How ids are kept: an integer type as it is, text that is all integers (CSV) as ``bigint``, else string."""
    if isinstance(dtype, (T.IntegerType, T.LongType, T.ShortType, T.ByteType)):
        return dtype.simpleString()
    return "bigint" if all_integers else "string"


def _ts(col: Column, dtype: T.DataType, unit: str) -> Column:
    """The time as a timestamp (null where it does not parse as ``unit``)."""
    if unit == "timestamp":
        return col.cast("timestamp") if isinstance(dtype, _TIME_TYPES) \
            else F.try_to_timestamp(col.cast("string"))
    number = col.try_cast("double")
    seconds = number / 1000 if unit == "ms" else number
    ok = (seconds > -_MAX_UNIX_SECONDS) & (seconds < _MAX_UNIX_SECONDS)
    return F.when(ok, F.timestamp_micros((seconds * 1e6).cast("long")))



_TIME_TYPES = (T.TimestampType, T.TimestampNTZType, T.DateType)


def _profile(frame: DataFrame, cols: dict[str, Column], types: dict[str, T.DataType], unit: str) -> dict:
    """One pass over the source for what reading it depends on: whether text ids are all integers
    (``user`` / ``item``), and for ``ts_unit: auto`` whether the times are numbers and the largest."""
    aggs = [F.coalesce(F.bool_and(cols[n].isNull() | F.trim(cols[n]).rlike(_INTEGER) | (F.trim(cols[n]) == "")),
                       F.lit(True)).alias(n)
            for n in ("user", "item") if isinstance(types[n], T.StringType)]
    if unit == "auto" and not isinstance(types["ts"], _TIME_TYPES):
        number = cols["ts"].try_cast("double")
        aggs += [F.bool_and(number.isNotNull() | cols["ts"].isNull()).alias("numeric"),
                 F.max(F.abs(number)).alias("top")]
    return frame.agg(*aggs).first().asDict() if aggs else {}


def _ts_unit(dtype: T.DataType, unit: str, profile: dict) -> str:
    """``data.ts_unit``, with ``auto`` resolved: a time type as it is, text that is not numbers as timestamps,
    numbers as milliseconds when the largest is above ``MS_THRESHOLD``, else seconds."""
    if unit != "auto":
        return unit
    if isinstance(dtype, _TIME_TYPES) or profile["numeric"] is False:
        return "timestamp"
    return "ms" if profile["top"] is not None and profile["top"] > MS_THRESHOLD else "s"


# ------------------------------------------------------------------ events
def classify_events(cfg: Config, source: OwnSource) -> tuple[DataFrame, dict]:
    """(events with ``user``, ``item``, ``rating``, ``ts``, ``reason``, provenance; how ids and time are read)."""
    mapping, frame = cfg.data.columns, source.frame
    cols = {k: mapped_column(source, mapping, k, "columns") for k in ("user", "item", "ts")}
    user, item, ts = cols["user"], cols["item"], cols["ts"]
    rating = mapped_column(source, mapping, "rating", "columns") if mapping.get("rating") else None
    types = {name: _field_type(frame, c) for name, c in cols.items()}
    profile = _profile(frame, cols, types, cfg.data.ts_unit)
    kinds = {n: _id_kind(types[n], profile.get(n)) for n in ("user", "item")}
    unit = _ts_unit(types["ts"], cfg.data.ts_unit, profile)
    value = F.lit(1.0) if rating is None else rating.try_cast("double")
    events = frame.select(
        _id(user, kinds["user"]).alias("user"), _id(item, kinds["item"]).alias("item"),
        F.when(~F.isnan(value), value).alias("rating"), _ts(ts, types["ts"], unit).alias("ts"), SOURCE, LINE, RAW)
    reason = (F.when(F.col("user").isNull(), F.lit(MISSING_USER))
              .when(F.col("item").isNull(), F.lit(MISSING_ITEM))
              .when(F.col("rating").isNull(), F.lit(NON_NUMERIC_RATING))
              .when(F.col("ts").isNull(), F.lit(bad_timestamp(unit))))
    return events.withColumn("reason", reason), {"user_ids": kinds["user"], "item_ids": kinds["item"],
                                                  "ts_unit": unit, "rating": "mapped" if rating is not None
                                                  else "absent: every event is a positive (1.0)"}


def check_rejects(classified: DataFrame, max_fraction: float, what: str) -> dict[str, dict]:
    """Rows read and rejected per source (one pass); DataError for the first source above ``max_fraction``."""
    stats = classified.groupBy(SOURCE, "reason").agg(
        F.count(F.lit(1)).alias("n"), F.min_by(F.struct(LINE, RAW), LINE).alias("first")).collect()
    if not stats:
        raise DataError(f"{what} has no rows")
    by_source: dict[str, dict] = {}
    for r in stats:
        entry = by_source.setdefault(r[SOURCE], {"rows": 0, "rejected": {}, "first": None})
        entry["rows"] += r["n"]
        if r["reason"] is not None:
            entry["rejected"][r["reason"]] = r["n"]
            first = (r["first"][LINE], r["first"][RAW], r["reason"])
            entry["first"] = min(entry["first"] or first, first)
    for name, entry in sorted(by_source.items()):
        bad = sum(entry["rejected"].values())
        if entry["rows"] and bad / entry["rows"] > max_fraction:
            line, raw, reason = entry["first"]
            raise DataError(f"{name}: {bad} of {entry['rows']} rows rejected ({bad / entry['rows']:.2%}), above "
                            f"data.max_reject_fraction={max_fraction}; first bad row {line}: {raw!r} ({reason})")
    return by_source


def rejected(df: DataFrame) -> DataFrame:
    """Rows with a reason, as ``rejected_rows``."""
    return df.filter(F.col("reason").isNotNull()).select(
        F.col(SOURCE).alias("source"), F.col(LINE).cast("long").alias("line"), F.col(RAW).alias("raw"), "reason")


def merge_events(good: DataFrame) -> DataFrame:
    """One row per (user, item): the latest event's rating and time (ties: the later row), and the count."""
    latest = F.max_by(F.struct("rating", "ts"), F.struct("ts", SOURCE, LINE))
    return good.groupBy("user", "item").agg(latest.alias("latest"), F.count(F.lit(1)).cast("int").alias("count")) \
        .select("user", "item", "latest.rating", "latest.ts", "count")


# ------------------------------------------------------------------ ids
def assign_ids(keys: DataFrame, previous: DataFrame | None, column: str) -> DataFrame:
    """``(<column> int, source_id)``: the previous map, plus the keys it lacks numbered after its largest id."""
    keys = keys.select(F.col("key").alias("source_id")).distinct()
    known = None if previous is None else previous.select(column, "source_id")
    top = 0 if known is None else known.agg(F.coalesce(F.max(column), F.lit(0))).first()[0]
    new = keys if known is None else keys.join(known, "source_id", "left_anti")
    numbered = new.select((F.lit(top) + F.row_number().over(Window.orderBy("source_id"))).cast("int").alias(column),
                          "source_id")
    return numbered if known is None else known.unionByName(numbered)


def previous_map(spark: SparkSession, cfg: Config, name: str, kind: str) -> DataFrame | None:
    """Last night's id map when there is one with ids of the same type (else a fresh map, with a warning)."""
    if not tables.filesystem(spark, cfg).exists(tables.table_uri(cfg, name)):
        return None
    found = tables.read_table(spark, cfg, name)
    have = found.schema["source_id"].dataType.simpleString()
    if have != kind:
        log.warning("%s holds %s ids, the source now has %s ids: numbering them afresh (models trained on the "
                    "old ids no longer match)", name, have, kind)
        return None
    return found


def _dense(df: DataFrame, ids: DataFrame, key: str) -> DataFrame:
    """``df``'s source ids in column ``key`` replaced by the map's dense id."""
    return df.join(ids.withColumnRenamed("source_id", key), key).drop(key)


# ------------------------------------------------------------------ item metadata
def item_metadata(spark: SparkSession, cfg: Config, item_kind: str) -> tuple[DataFrame | None, DataFrame, dict]:
    """(metadata by source item id: title, categories, text; its rejected rows; per-source counts)."""
    data = cfg.data
    if not data.items:
        return None, spark.createDataFrame([], REJECTED_SCHEMA), {}
    source = read_source(spark, data.format, data.items, data.csv_separator)
    mapping = data.item_columns
    item = mapped_column(source, mapping, "item", "item_columns")
    fields = [_id(item, item_kind).alias("item")]
    fields.append((mapped_column(source, mapping, "title", "item_columns").cast("string") if mapping.get("title")
                   else F.lit(None).cast("string")).alias("title"))
    fields.append(_categories(source, mapping).alias("categories"))
    texts = [c.strip() for c in mapping.get("text", "").split(",") if c.strip()]
    text_cols = [mapped_column(source, {"text": c}, "text", "item_columns").cast("string") for c in texts]
    fields.append((F.concat_ws(" ", *text_cols) if text_cols else F.lit(None).cast("string")).alias("text"))
    frame = source.frame.select(*fields, SOURCE, LINE, RAW)
    first = Window.partitionBy("item").orderBy(SOURCE, LINE)
    classified = frame.withColumn("reason", F.when(F.col("item").isNull(), F.lit(MISSING_ITEM))
                                  .when(F.row_number().over(first) > 1, F.lit(DUPLICATE_ID)))
    counts = check_rejects(classified, data.max_reject_fraction, source.name)
    good = classified.filter(F.col("reason").isNull()).select("item", "title", "categories", "text")
    return good, rejected(classified), counts


def _categories(source: OwnSource, mapping: dict[str, str]) -> Column:
    """A list column as array<string>; a string column split on ``|``."""
    if not mapping.get("categories"):
        return F.lit(None).cast("array<string>")
    col = mapped_column(source, mapping, "categories", "item_columns")
    dtype = _field_type(source.frame, col)
    if isinstance(dtype, T.ArrayType):
        return F.filter(F.transform(col, lambda c: F.trim(c.cast("string"))), lambda c: c != "")
    parts = F.split(F.coalesce(col.cast("string"), F.lit("")), r"\|")
    return F.filter(F.transform(parts, lambda c: F.trim(c)), lambda c: c != "")


def items_table(item_ids: DataFrame, metadata: DataFrame | None) -> DataFrame:
    """The ``items`` table: every item of the map, its metadata where there is some."""
    out = item_ids.withColumnRenamed("source_id", "item")
    if metadata is not None:
        out = out.join(metadata, "item", "left")
    else:
        out = out.select("*", *[F.lit(None).alias(c) for c in ("title", "categories", "text")])
    nulls = {f.name: F.lit(None).cast(f.dataType) for f in ITEMS_SCHEMA.fields}
    cols = {**nulls, "item_id": F.col("item_id"), "title": F.col("title").cast("string"),
            "genres": F.col("categories").cast("array<string>"), "overview": F.col("text").cast("string"),
            "raw_id": F.col("item").cast("string")}
    return out.select(*[cols[f.name].cast(f.dataType).alias(f.name) for f in ITEMS_SCHEMA.fields])


# ------------------------------------------------------------------ the stage
def prepare_own(spark: SparkSession, cfg: Config) -> Prepared:
    """Your own events and item metadata -> interactions, items, rejected_rows, user_ids, item_ids (lazy)."""
    data = cfg.data
    where = data.table if data.format == "table" else data.path
    source = read_source(spark, data.format, where, data.csv_separator)
    events, reading = classify_events(cfg, source)
    counts = check_rejects(events, data.max_reject_fraction, source.name)
    merged = merge_events(events.filter(F.col("reason").isNull()))
    metadata, meta_rejects, meta_counts = item_metadata(spark, cfg, reading["item_ids"])
    item_keys = merged.select(F.col("item").alias("key"))
    if metadata is not None:
        item_keys = item_keys.unionByName(metadata.select(F.col("item").alias("key")))
    user_ids = assign_ids(merged.select(F.col("user").alias("key")),
                          previous_map(spark, cfg, "user_ids", reading["user_ids"]), "user_id")
    item_ids = assign_ids(item_keys, previous_map(spark, cfg, "item_ids", reading["item_ids"]), "item_id")
    interactions = _dense(_dense(merged, user_ids, "user"), item_ids, "item").select(
        F.col("user_id").cast("int"), F.col("item_id").cast("int"), F.col("rating").cast("float"), "ts",
        "count")
    summary = _summary(data, where, reading, counts, meta_counts, merged.count())
    return Prepared(interactions, items_table(item_ids, metadata), rejected(events).unionByName(meta_rejects),
                    summary, {"user_ids": user_ids, "item_ids": item_ids})


def _summary(data: DataConfig, where: str, reading: dict, counts: dict[str, dict], meta_counts: dict[str, dict],
             pairs: int) -> dict:
    """The stage's counts: rows read and rejected per file, events merged into ``pairs`` interactions."""
    sources = dict(sorted({**counts, **meta_counts}.items()))
    rejected_total: dict[str, int] = {}
    for entry in sources.values():
        for reason, n in entry["rejected"].items():
            rejected_total[reason] = rejected_total.get(reason, 0) + n
    good_rows = sum(e["rows"] - sum(e["rejected"].values()) for e in counts.values())
    return {
        "format": data.format, "path": to_uri(where) if data.format != "table" else where,
        "files": list(sources), **reading,
        "ratings_read": sum(e["rows"] for e in counts.values()), "interactions": pairs,
        "events_merged": good_rows - pairs,
        "rejected_total": sum(rejected_total.values()), "rejected": dict(sorted(rejected_total.items())),
        "rejected_by_file": {k: sum(e["rejected"].values()) for k, e in sources.items() if e["rejected"]},
        "rows_read": {k: e["rows"] for k, e in sources.items()},
    }
