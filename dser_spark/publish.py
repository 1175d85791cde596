"""Publishing the nightly recommendations: the checks before, the swap, the views after.

Before anything is scored: a ``dt`` that retention would delete right away
is refused (``check_backfill``), and a newly trained model must pass the
quality gate against the model behind the latest partition (``quality_gate``).
The partition is then staged, checked (every asked-for user has exactly
min(k, candidates left) rows ranked 1..n with scores never rising, only
candidate items, none the user interacted with), and only then swapped in
(``partitioned.publish``: by pointer); the catalog views follow.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from dser_spark import models, partitioned, tables
from dser_spark.config import OWN_FORMATS, Config
from dser_spark.runs import GateRefused

log = logging.getLogger("dser_spark")

TABLE = "recommendations"


class BackfillRefused(ValueError):
    """The asked-for ``dt`` is older than every partition retention keeps."""


def check_backfill(spark: SparkSession, cfg: Config, dt: str) -> None:
    """Refuse a ``dt`` that retention would delete right after publishing it.

    With ``publish.retain`` partitions newer than ``dt`` already published, a
    partition for ``dt`` would be the oldest of ``retain + 1`` and go at once.
    """
    newer = [p for p in partitioned.partitions(spark, cfg, TABLE) if p > dt]
    if len(newer) >= cfg.publish.retain:
        raise BackfillRefused(
            f"dt={dt} is older than the {len(newer)} newer published partitions that publish.retain="
            f"{cfg.publish.retain} keeps (oldest kept: {newer[-cfg.publish.retain]}): it would be deleted right "
            f"after publishing. Raise publish.retain (e.g. --set publish.retain={len(newer) + 1}) to backfill it.")


def latest_partition_model(spark: SparkSession, cfg: Config) -> tuple[str, str] | None:
    """(dt, model id) of the newest published partition, None before the first."""
    published = partitioned.partitions(spark, cfg, TABLE)
    if not published:
        return None
    rows = (spark.read.parquet(partitioned.location(spark, cfg, TABLE, published[-1])).select("model_run_id")
            .distinct().collect())
    return published[-1], rows[0]["model_run_id"] if rows else ""


def model_test_hr(spark: SparkSession, cfg: Config, mid: str) -> float | None:
    """The test HR@``evaluate.k`` (sampled protocol) recorded in a model's manifest."""
    found = models.manifest(spark, cfg, mid)
    return (found or {}).get("test", {}).get(f"sampled HR@{cfg.evaluate.k}")


def quality_gate(spark: SparkSession, cfg: Config, mid: str, force: bool) -> str:
    """Pass model ``mid`` or raise ``GateRefused``; returns what was decided, for the log.

    The gate compares a model that is not the one behind the latest partition
    with that one: below ``publish.min_quality_ratio`` x its test HR, refused.
    The first model ever published passes; ``force`` passes anything.
    """
    behind = latest_partition_model(spark, cfg)
    if behind is None:
        return "quality gate: first publication, nothing to compare with"
    latest_dt, previous = behind
    if previous == mid:
        return f"quality gate: {mid} already serves the latest partition (dt={latest_dt})"
    if force:
        return f"quality gate: skipped (--force) for {mid} (latest partition dt={latest_dt} is from {previous})"
    new, old = model_test_hr(spark, cfg, mid), model_test_hr(spark, cfg, previous)
    k, ratio = cfg.evaluate.k, cfg.publish.min_quality_ratio
    if new is None:
        raise GateRefused(f"quality gate: model {mid} has no test HR@{k} (run `dser-spark evaluate` for it), so it "
                          f"cannot be compared with {previous} behind dt={latest_dt}; --force publishes anyway")
    if old is not None and new < ratio * old:
        raise GateRefused(f"quality gate refused model {mid}: test HR@{k} {new:.4f} < {ratio} x {old:.4f} of {previous} "
                          f"behind the latest partition dt={latest_dt}; nothing published, latest unchanged; "
                          f"--force publishes anyway")
    return (f"quality gate passed: {mid} test HR@{k} {new:.4f} vs {previous} "
            f"{'(no metrics)' if old is None else f'{old:.4f}'} (ratio >= {ratio})")


def published_models(spark: SparkSession, cfg: Config) -> dict[str, str]:
    """dt -> model id of every retained partition."""
    published = partitioned.read(spark, cfg, TABLE)
    if published is None:
        return {}
    return {r["dt"]: r["model_run_id"] for r in published.select("dt", "model_run_id").distinct().collect()}


def publish_recommendations(spark: SparkSession, cfg: Config, recs: DataFrame, dt: str, targets: DataFrame,
                            candidates: np.ndarray, interactions: DataFrame) -> str:
    """Validate and publish ``recs`` as partition ``dt``; (re)point the views; returns its location.

    ``recommendations_titled`` adds item titles; ``recommendations_latest`` is
    the newest published ``dt`` of it.
    """
    rc, db = cfg.recommend, cfg.warehouse.database
    items = spark.createDataFrame(pd.DataFrame({"item_id": candidates.astype(np.int32)}))
    maps = id_maps(spark, cfg)
    if maps is not None:  # your own data: published with the source's ids, and checked as published
        recs, targets, items, interactions = (with_source_ids(df, maps) for df in (recs, targets, items, interactions))
    checks = [lambda df: check_recommendations(df, targets, items, interactions, rc.k, rc.exclude_seen)]
    location = partitioned.publish(spark, cfg, recs, TABLE, dt, checks)
    tables.ensure_registered(spark, cfg, "items")
    on = "r.item_id = i.item_id" if maps is None else "CAST(r.item_id AS STRING) = i.raw_id"
    tables.register_view(spark, cfg, f"{TABLE}_titled",
                         f"SELECT r.user_id, r.rank, r.item_id, i.title, r.score, r.source, r.model_run_id, r.dt "
                         f"FROM {db}.{TABLE} r LEFT JOIN {db}.items i ON {on}")
    latest = partitioned.partitions(spark, cfg, TABLE)[-1]
    tables.register_view(spark, cfg, f"{TABLE}_latest", f"SELECT * FROM {db}.{TABLE}_titled WHERE dt = '{latest}'")
    return location


def id_maps(spark: SparkSession, cfg: Config) -> dict[str, DataFrame] | None:
    """Your own data's ``user_ids`` / ``item_ids`` (dense id, ``source_id``); None for MovieLens sources, whose
    tables carry the source's ids already."""
    if cfg.data.format not in OWN_FORMATS:
        return None
    return {key: tables.read_table(spark, cfg, f"{key}s") for key in ("user_id", "item_id")}


def with_source_ids(df: DataFrame, maps: dict[str, DataFrame]) -> DataFrame:
    """``df`` with its ``user_id`` / ``item_id`` columns (where present) replaced by the source's ids."""
    for key, ids in maps.items():
        if key in df.columns:
            mapped = ids.select(key, F.col("source_id").alias("_source_id"))
            joined = df.join(F.broadcast(mapped) if key == "item_id" else mapped, key)
            df = joined.select(*[F.col("_source_id").alias(key) if c == key else F.col(c) for c in df.columns])
    return df


def check_recommendations(df: DataFrame, targets: DataFrame, candidates: DataFrame, interactions: DataFrame,
                          k: int, exclude_seen: bool) -> None:
    """Validate a staged recommendations partition; raise ValidationError naming what is wrong.

    Each target user has exactly min(k, candidates left) rows, where the
    candidates left are the candidate items minus (when excluded) the user's
    own; ranks run 1..n with scores never rising; only target users, only
    candidate items and (when excluded) none the user interacted with.
    """
    own = interactions.select("user_id", "item_id").distinct().join(F.broadcast(candidates), "item_id")
    n_items = candidates.count()
    left = F.lit(n_items) - (F.coalesce(F.col("own"), F.lit(0)) if exclude_seen else F.lit(0))
    want = (targets.select("user_id").distinct()
            .join(own.groupBy("user_id").agg(F.count("*").alias("own")), "user_id", "left")
            .select("user_id", F.least(F.lit(k), left).alias("want")))
    by_rank = Window.partitionBy("user_id").orderBy("rank")
    got = (df.withColumn("rising", (F.col("score") > F.lag("score").over(by_rank)).cast("int"))
           .groupBy("user_id").agg(F.count("*").alias("n"), F.min("rank").alias("lo"), F.max("rank").alias("hi"),
                                   F.countDistinct("rank").alias("ranks"), F.max("rising").alias("rising")))
    n, w = F.col("n"), F.col("want")
    problems = {
        "users without recommendations": n.isNull() & (w > 0),
        "users not asked for": w.isNull(),
        "users with a wrong number of rows (expected min(k, candidates left))": n.isNotNull() & (n != w),
        "users whose ranks are not 1..n": (F.col("lo") != 1) | (F.col("hi") != n) | (F.col("ranks") != n),
        "users whose scores rise with rank": F.col("rising") == 1,
    }
    counts = want.join(got, "user_id", "full").agg(
        *[F.sum(F.when(cond, 1).otherwise(0)).alias(f"p{i}") for i, cond in enumerate(problems.values())]).first()
    found = [f"{counts[f'p{i}']} {text}" for i, text in enumerate(problems) if counts[f"p{i}"]]
    outside = df.join(F.broadcast(candidates), "item_id", "left_anti").count()
    if outside:
        found.append(f"{outside} rows with items outside the candidates")
    if exclude_seen:
        seen = df.join(interactions.select("user_id", "item_id"), ["user_id", "item_id"], "left_semi").count()
        if seen:
            found.append(f"{seen} rows with items the user already interacted with")
    if found:
        raise tables.ValidationError("recommendations not published: " + "; ".join(found))
