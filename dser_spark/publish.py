"""Publishing the nightly recommendations: checks on the staged partition, then the swap and the views.

A partition is staged, checked here (every asked-for user has exactly
min(k, candidates left) rows ranked 1..n with scores never rising, only
candidate items, none the user interacted with), and only then swapped in
(``tables.publish_partition``); the catalog views follow.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from dser_spark import tables
from dser_spark.config import Config

TABLE = "recommendations"


def publish_recommendations(spark: SparkSession, cfg: Config, recs: DataFrame, dt: str, targets: DataFrame,
                            candidates: np.ndarray, interactions: DataFrame) -> str:
    """Validate and publish ``recs`` as partition ``dt``; (re)point the views; returns its location.

    ``recommendations_titled`` adds item titles; ``recommendations_latest`` is
    the newest published ``dt`` of it.
    """
    rc, db = cfg.recommend, cfg.warehouse.database
    items = spark.createDataFrame(pd.DataFrame({"item_id": candidates.astype(np.int32)}))
    checks = [lambda df: check_recommendations(df, targets, items, interactions, rc.k, rc.exclude_seen)]
    location = tables.publish_partition(spark, cfg, recs, TABLE, dt, checks)
    tables.register_view(spark, cfg, f"{TABLE}_titled",
                         f"SELECT r.user_id, r.rank, r.item_id, i.title, r.score, r.source, r.model_run_id, r.dt "
                         f"FROM {db}.{TABLE} r LEFT JOIN {db}.items i ON r.item_id = i.item_id")
    latest = tables.partitions(spark, cfg, TABLE)[-1]
    tables.register_view(spark, cfg, f"{TABLE}_latest", f"SELECT * FROM {db}.{TABLE}_titled WHERE dt = '{latest}'")
    return location


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
