"""The ratings file, read and classified on the executors in Spark SQL.

Each line keeps its 1-based physical line number; every line gets the first check
it fails as ``reason`` (null for a good row); among good rows of one (user, item)
the latest wins and the others become ``DUPLICATE`` rejects. Nothing is collected
to the driver but ids and counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dser_spark.prepare.catalog import Catalog
from dser_spark.prepare.lines import (
    BAD_ITEM, BAD_TIMESTAMP, BAD_USER, DUPLICATE, MISSING_FIELD, NON_NUMERIC_RATING,
    RATING_RANGE, UNKNOWN_ITEM, ReadLog, malformed,
)
from dser_spark.prepare.locate import SourceFile

INTERACTIONS_SCHEMA = T.StructType([
    T.StructField("user_id", T.IntegerType()), T.StructField("item_id", T.IntegerType()),
    T.StructField("rating", T.FloatType()), T.StructField("ts", T.TimestampType()),
    T.StructField("count", T.IntegerType()),
])
REJECTED_SCHEMA = T.StructType([
    T.StructField("source", T.StringType()), T.StructField("line", T.LongType()),
    T.StructField("raw", T.StringType()), T.StructField("reason", T.StringType()),
])
_MAX_UNIX_SECONDS = 253402300800.0  # 10000-01-01


@dataclass(frozen=True)
class RatingsFile:
    """How to split one ratings file: separator regex, field count, field positions."""

    path: SourceFile
    sep: str
    width: int
    cols: tuple[int, int, int, int]  # user, item, rating, timestamp
    has_header: bool = False  # line 1 is a header (checked on the driver)
    tokens: bool = False  # RecBole: ids are tokens, maybe strings


@dataclass
class Source:
    """One data set: its ratings file and its catalogue, or a builder of items for rated ids."""

    ratings: RatingsFile
    catalog: Catalog | None
    build: Callable[[list[int]], Catalog] | None = None


@dataclass
class Ratings:
    """The classified ratings file (lazy) and what is needed to finish it."""

    classified: DataFrame  # line, value (rejects only), user_id, item_id, rating, ts, reason
    item_keys: dict[str, int] | None  # raw item token -> item_id (string-id sources)
    lines: int  # physical lines below the header
    text: DataFrame  # (line, value) of the whole file

    def raw(self, line: int) -> str:
        """The text of one line (a scan of the file: for error messages only)."""
        return self.text.filter(F.col("line") == line).first()["value"]


def _numbered_lines(spark: SparkSession, path: SourceFile) -> tuple[DataFrame, int]:
    """(line, value) with 1-based physical line numbers, and the number of lines; on executors.

    ``monotonically_increasing_id`` numbers rows within a partition; a first job counts
    the rows of each file block so the offsets of earlier blocks can be added.
    """
    raw = spark.read.text(path.uri).select(
        "value", F.expr("input_file_block_start()").alias("blk"),
        F.monotonically_increasing_id().alias("mid"))
    blocks = (raw.groupBy("blk").agg(F.count(F.lit(1)).alias("n"), F.min("mid").alias("first"))
              .orderBy("blk").collect())
    pairs: list[Column] = []
    offset = 0
    for block in blocks:
        pairs += [F.lit(block["blk"]), F.lit(offset + 1 - block["first"])]
        offset += block["n"]
    line = F.col("mid") + F.element_at(F.create_map(*pairs), F.col("blk"))
    return raw.select(line.alias("line"), "value"), offset


def _data_lines(lines: DataFrame, spec: RatingsFile) -> DataFrame:
    """Lines that hold data: not the header, not blank; fields split in Spark SQL."""
    parts = F.split(F.col("value"), spec.sep, -1)
    keep = F.trim(F.col("value")) != ""
    if spec.has_header:
        keep &= F.col("line") != 1
    names = ("u", "i", "r", "t")
    return lines.filter(keep).select(
        "line", "value", F.size(parts).alias("n"),
        *[F.trim(F.get(parts, c)).alias(name) for name, c in zip(names, spec.cols)])


def _token_modes(data: DataFrame, width: int) -> tuple[str, str | None, bool]:
    """User id scheme ('int', 'prefix' or 'dense'), the common prefix, and whether items are ints."""
    prefix = F.regexp_extract("u", r"^(.*\D)(0|[1-9]\d{0,8})$", 1)
    row = data.filter((F.col("n") == width) & (F.col("u") != "")).agg(
        F.coalesce(F.bool_and(F.col("u").rlike(r"^\d{1,9}$")), F.lit(True)).alias("user_int"),
        F.coalesce(F.bool_and(prefix != ""), F.lit(True)).alias("user_prefix"),
        F.min(prefix).alias("lo"), F.max(prefix).alias("hi"),
        F.coalesce(F.bool_and(F.col("i").rlike(r"^\d{1,9}$") | (F.col("i") == "")),
                   F.lit(True)).alias("item_int"),
    ).first()
    if row["user_int"]:
        return "int", None, row["item_int"]
    if row["user_prefix"] and row["lo"] == row["hi"]:
        return "prefix", row["lo"], row["item_int"]
    return "dense", None, row["item_int"]


def _int_id(col: str) -> Column:
    value = F.col(col).try_cast("int")
    return F.when(value >= 0, value)


def _classify(data: DataFrame, spec: RatingsFile, user_id: Column, item_id: Column,
              item_reason: str) -> DataFrame:
    """Add rating, ts and the first failing check as ``reason`` (null = a good row)."""
    rating = F.col("r").try_cast("double")
    seconds = F.col("t").try_cast("double")
    ts_ok = F.coalesce((seconds >= 0) & (seconds < _MAX_UNIX_SECONDS), F.lit(False))
    missing = (F.col("u") == "") | (F.col("i") == "") | (F.col("r") == "") | (F.col("t") == "")
    reason = (F.when(F.col("n") != spec.width, F.lit(malformed(spec.width)))
              .when(missing, F.lit(MISSING_FIELD))
              .when(user_id.isNull(), F.lit(BAD_USER))
              .when(item_id.isNull(), F.lit(item_reason))
              .when(rating.isNull(), F.lit(NON_NUMERIC_RATING))
              .when(~((rating > 0) & (rating <= 5) & (F.floor(rating * 2) == rating * 2)),
                    F.lit(RATING_RANGE))
              .when(~ts_ok, F.lit(BAD_TIMESTAMP)))
    return data.select(
        "line", "value", user_id.alias("user_id"), item_id.alias("item_id"),
        rating.cast("float").alias("rating"),
        F.when(ts_ok, F.timestamp_seconds(seconds)).alias("ts"), reason.alias("reason"))


def _mapping(spark: SparkSession, pairs: list[tuple[Any, int]], key_type: str) -> DataFrame:
    return F.broadcast(spark.createDataFrame(pairs, f"key {key_type}, mapped int"))


def _dense(keys: list[str]) -> list[tuple[str, int]]:
    """1-based ids by sorted raw id."""
    return [(key, index) for index, key in enumerate(sorted(keys), start=1)]


def _distinct(data: DataFrame, col: str, width: int) -> list[str]:
    """Distinct non-empty tokens of a column (small: ids, not ratings)."""
    rows = data.filter((F.col("n") == width) & (F.col(col) != "")).select(col).distinct().collect()
    return [r[0] for r in rows]


def read_ratings(spark: SparkSession, spec: RatingsFile, catalog: Catalog | None) -> Ratings:
    """Classify every line of the ratings file; resolve ids; mark duplicates (all lazy)."""
    lines, n_lines = _numbered_lines(spark, spec.path)
    data = _data_lines(lines, spec)
    user_mode, prefix, items_int = ("int", None, True)
    if spec.tokens:
        user_mode, prefix, items_int = _token_modes(data, spec.width)
    item_keys: dict[str, int] | None = None
    if catalog is not None and catalog.tokens:
        item_keys = dict(_dense(list(catalog.items)))
    elif catalog is None and not items_int:
        item_keys = dict(_dense(_distinct(data, "i", spec.width)))
    if item_keys is not None:
        data = data.join(_mapping(spark, list(item_keys.items()), "string"),
                         F.col("i") == F.col("key"), "left").withColumnRenamed("mapped", "item")
        item_id = F.col("item")
    else:
        item_id = _int_id("i")
    if user_mode == "dense":
        users = _dense(_distinct(data, "u", spec.width))
        data = (data.join(_mapping(spark, users, "string").withColumnRenamed("key", "ukey"),
                          F.col("u") == F.col("ukey"), "left").withColumnRenamed("mapped", "user"))
        user_id = F.col("user")
    elif user_mode == "prefix":
        user_id = F.when(F.col("u").startswith(prefix),
                         F.regexp_extract("u", r"(\d+)$", 1).try_cast("int"))
    else:
        user_id = _int_id("u")
    classified = _classify(data, spec, user_id, item_id,
                           BAD_ITEM if item_keys is None else UNKNOWN_ITEM)
    if catalog is not None and not catalog.tokens:
        known = spark.createDataFrame([(k,) for k in catalog.items], "known int")
        classified = (classified.join(F.broadcast(known), F.col("item_id") == F.col("known"), "left")
                      .withColumn("reason", F.coalesce("reason", F.when(F.col("known").isNull(),
                                                                         F.lit(UNKNOWN_ITEM))))
                      .drop("known"))
    return Ratings(_mark_duplicates(classified), item_keys, n_lines - spec.has_header, lines)


def _mark_duplicates(df: DataFrame) -> DataFrame:
    """Among good rows of one (user, item) keep the latest (ts, then line); reject the rest.

    Only rejected lines keep their text through the shuffle; duplicates get theirs back
    by line number in ``rejected_frame``.
    """
    df = df.withColumn("value", F.when(F.col("reason").isNotNull(), F.col("value")))
    order = Window.partitionBy("user_id", "item_id", F.col("reason").isNull()).orderBy(
        F.col("ts").desc(), F.col("line").desc())
    reason = F.when(F.col("reason").isNull() & (F.row_number().over(order) > 1),
                    F.lit(DUPLICATE)).otherwise(F.col("reason"))
    return df.select("line", "value", "user_id", "item_id", "rating", "ts", reason.alias("reason"))


def rejected_frame(spark: SparkSession, cached: DataFrame, text: DataFrame, name: str,
                   log: ReadLog) -> DataFrame:
    """Rejected ratings lines (Spark) plus rejected catalogue rows (driver)."""
    bad = cached.filter(F.col("reason").isNotNull()).select("line", "value", "reason")
    if log.spark_rejects.get(DUPLICATE):
        duplicates = F.broadcast(bad.filter(F.col("reason") == DUPLICATE).select("line", "reason"))
        bad = (bad.filter(F.col("reason") != DUPLICATE)
               .unionByName(text.join(duplicates, "line").select("line", "value", "reason")))
    ratings = bad.select(F.lit(name).alias("source"), F.col("line").cast("long"),
                         F.col("value").alias("raw"), "reason")
    return ratings.unionByName(spark.createDataFrame(log.rejects, REJECTED_SCHEMA))
