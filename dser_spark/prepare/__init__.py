"""Stage 1, prepare: raw MovieLens files -> interactions, items, rejected_rows (your own events: ``own``).

Sources are read through the session's Hadoop FileSystem API, so ``data.path`` may be a
local path, a ``file:`` URI or any Hadoop URI (``hdfs://``, ``s3a://``); ``locate``
finds the files, and stages ``builtin:`` data from the driver's wheels to
``<warehouse root>/_sources/`` so executors only need the warehouse.
Ratings files (tens of millions of lines) are read as text and validated on the
executors in Spark SQL, each line keeping its 1-based physical line number
(``ratings``). The small catalogue files (movies, links, tags, TMDB metadata) are
parsed on the driver (``lines``, ``catalog``), one module per source layout
(``recbole``, ``grouplens``, ``ml_latest``, ``kaggle``).
Every bad row lands in ``rejected_rows(source, line, raw, reason)``; a file whose
rejected fraction exceeds ``data.max_reject_fraction`` fails the stage.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dser_spark.config import OWN_FORMATS, Config
from dser_spark.prepare.catalog import ITEMS_SCHEMA, Catalog, items_frame, rated_catalog
from dser_spark.prepare.errors import DataError
from dser_spark.prepare.grouplens import load_ml1m, load_ml100k
from dser_spark.prepare.kaggle import load_kaggle
from dser_spark.prepare.lines import (
    BAD_ID, BAD_ITEM, BAD_TIMESTAMP, BAD_USER, DUPLICATE, DUPLICATE_ID, MISSING_FIELD,
    NON_NUMERIC_RATING, RATING_RANGE, UNKNOWN_ITEM, ReadLog, bad_list, check_reject_fractions,
    malformed,
)
from dser_spark.prepare.locate import (
    SourceDir, detect_format, open_source_dir, resolve_data_path, stage_builtin, wheel_directory,
)
from dser_spark.prepare.ml_latest import load_ml_latest
from dser_spark.prepare.own import prepare_own
from dser_spark.prepare.prepared import Prepared
from dser_spark.prepare.ratings import (
    INTERACTIONS_SCHEMA, REJECTED_SCHEMA, Ratings, Source, read_ratings, rejected_frame,
)
from dser_spark.prepare.recbole import load_recbole

__all__ = [
    "BAD_ID", "BAD_ITEM", "BAD_TIMESTAMP", "BAD_USER", "DUPLICATE", "DUPLICATE_ID",
    "INTERACTIONS_SCHEMA", "ITEMS_SCHEMA", "MISSING_FIELD", "NON_NUMERIC_RATING", "RATING_RANGE",
    "REJECTED_SCHEMA", "UNKNOWN_ITEM", "DataError", "Prepared", "SourceDir", "bad_list",
    "detect_format", "malformed", "open_source_dir", "prepare", "resolve_data_path", "stage_builtin",
    "wheel_directory",
]

logger = logging.getLogger("dser_spark")

LOADERS: dict[str, Callable[[SourceDir, ReadLog], Source]] = {
    "recbole": load_recbole, "ml-100k": load_ml100k, "ml-1m": load_ml1m,
    "ml-latest": load_ml_latest, "kaggle": load_kaggle,
}


def prepare(spark: SparkSession, cfg: Config) -> Prepared:
    """Read the raw files of ``cfg.data`` into DataFrames; fail on too many rejected rows.

    The classified ratings are persisted (one pass feeds the summary and the tables);
    call ``Prepared.unpersist()`` once the tables are written.
    """
    data = cfg.data
    if data.format in OWN_FORMATS:
        own = prepare_own(spark, cfg)
        logger.info("prepare %s: %s", own.summary["path"], own.summary)
        return own
    root = resolve_data_path(spark, cfg)
    fmt = detect_format(root) if data.format == "auto" else data.format
    if fmt not in LOADERS:
        raise DataError(f"data.format={fmt!r}: unknown; expected one of auto, {', '.join(LOADERS)}")
    log = ReadLog()
    source = LOADERS[fmt](root, log)
    ratings = read_ratings(spark, source.ratings, source.catalog)
    cached = ratings.classified.persist()
    try:
        return _finish(spark, fmt, root, source, ratings, cached, log, data.max_reject_fraction)
    except BaseException:
        cached.unpersist()
        raise


def _finish(spark: SparkSession, fmt: str, root: SourceDir, source: Source, ratings: Ratings,
            cached: DataFrame, log: ReadLog, max_fraction: float) -> Prepared:
    """Count (the one full pass), build items, check reject fractions, assemble the output."""
    name = source.ratings.path.name
    stats = cached.groupBy("reason").agg(
        F.count(F.lit(1)).alias("n"), F.min_by(F.struct("line", "value"), "line").alias("first")
    ).collect()
    read = sum(r["n"] for r in stats)
    if read == 0:
        raise DataError(f"{name} has no ratings: expected at least one data line")
    log.rows[name] += read
    log.blank += ratings.lines - read
    for r in stats:
        if r["reason"] is not None:
            log.spark_rejects[r["reason"]] = r["n"]
            log.spark_samples.append((r["first"]["line"], r["first"]["value"], r["reason"]))
    good = cached.filter(F.col("reason").isNull())
    catalog = source.catalog if source.catalog is not None else rated_catalog(
        good, ratings.item_keys, source.build)
    check_reject_fractions(log, max_fraction, name, ratings.raw)
    summary = _summary(fmt, root, source, read, log, catalog)
    log_line = {k: v for k, v in summary.items() if k not in ("path", "files")}
    logger.info("prepare %s: %s", root, log_line)
    return Prepared(
        interactions=good.select("user_id", "item_id", "rating", "ts", F.lit(1).alias("count")),
        items=items_frame(spark, catalog, ratings.item_keys),
        rejected_rows=rejected_frame(spark, cached, ratings.text, name, log),
        summary=summary, _cached=cached)


def _summary(fmt: str, root: SourceDir, source: Source, read: int, log: ReadLog, catalog: Catalog) -> dict:
    """Counts reported by the stage (plain Python values)."""
    rejected = Counter(r[3] for r in log.rejects) + Counter(log.spark_rejects)
    by_file = log.rejects_by_file(source.ratings.path.name)
    return {
        "format": fmt, "path": root.uri, "files": sorted(log.rows),
        "ratings_read": read,
        "interactions": read - sum(log.spark_rejects.values()),
        "items": len(catalog.items),
        "items_without_metadata": sum(1 for v in catalog.items.values() if v["title"] is None),
        "duplicates_replaced": log.spark_rejects.get(DUPLICATE, 0),
        "rejected_total": sum(rejected.values()),
        "rejected": dict(sorted(rejected.items())),
        "rejected_by_file": {k: v for k, v in sorted(by_file.items()) if v},
        "rows_read": dict(sorted(log.rows.items())),
        "blank_lines": log.blank,
    }
