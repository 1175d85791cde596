"""Implicit feedback, leave-latest-out split, time-ordered sequences, evaluation candidates.

All Spark work runs on executors (window functions and collect_list +
mapInPandas over user blocks); nothing collects interactions to the driver.
A fit sees one *scope* of each user's positives: ``select`` (train only, the
choices are made on the validation item), ``eval`` (train + validation,
scored once on test) or ``serve`` (everything). The held-out items are each
user's latest, so a scope is a prefix of the user's time-ordered sequence.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from dser_spark.config import Config
from dser_spark.negatives import draw_negatives, negative_weights, samples_for_users, user_rng

log = logging.getLogger("dser_spark")

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SELECT, EVAL, SERVE = "select", "eval", "serve"
SCOPE_SPLITS = {SELECT: (TRAIN,), EVAL: (TRAIN, VALIDATION), SERVE: (TRAIN, VALIDATION, TEST)}
EVAL_SALT = 1_000_003  # keeps evaluation draws independent of training epochs


@dataclass
class SequenceTables:
    """Output of the sequences stage (``train_samples`` only when asked for)."""

    sequences: DataFrame
    splits: DataFrame
    eval_candidates: DataFrame
    train_samples: DataFrame | None


def positives(interactions: DataFrame, min_rating: float) -> DataFrame:
    """Interactions that count as positive implicit feedback."""
    if min_rating <= 0:
        return interactions
    return interactions.filter(F.col("rating") >= F.lit(min_rating))


def build_sequences(splits: DataFrame) -> DataFrame:
    """sequences(user_id, item_ids, ts, has_validation, has_test): each user's positives in time
    order (ties by item), and whether its latest ones are held out (test last, validation before it)."""
    ordered = F.array_sort(F.collect_list(F.struct("ts", "item_id", "split")))
    return (splits.groupBy("user_id").agg(ordered.alias("events"))
            .select("user_id",
                    F.col("events.item_id").alias("item_ids"),
                    F.col("events.ts").alias("ts"),
                    F.array_contains("events.split", VALIDATION).alias("has_validation"),
                    F.array_contains("events.split", TEST).alias("has_test")))


def scope_positives(splits: DataFrame, scope: str) -> DataFrame:
    """The rows of ``splits`` a fit of ``scope`` may see."""
    return splits.filter(F.col("split").isin(*SCOPE_SPLITS[scope]))


def scope_sequences(sequences: pd.DataFrame, scope: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sorted user ids, each user's items in time order) of one scope, from collected ``sequences``.

    The held-out items are the latest: a scope drops the last one (test) or two
    (validation, test) items of each user's sequence. Each user's items are a
    view of the collected array (its integer type kept): the scopes of a run
    share one copy of the positives.
    """
    rows = sequences.sort_values("user_id")
    held = np.zeros(len(rows), dtype=np.int64)
    if scope in (SELECT, EVAL):
        held += rows["has_test"].to_numpy(bool)
    if scope == SELECT:
        held += rows["has_validation"].to_numpy(bool)
    seqs = [_integers(s)[:len(s) - h] for s, h in zip(rows["item_ids"], held)]
    keep = np.array([len(s) > 0 for s in seqs], dtype=bool)
    return rows["user_id"].to_numpy(np.int64)[keep], [s for s, k in zip(seqs, keep) if k]


def _integers(items) -> np.ndarray:
    """``items`` as an integer array: itself if it already is one (no copy), else int64."""
    arr = np.asarray(items)
    return arr if arr.dtype.kind in "iu" else arr.astype(np.int64)


def split_latest(pos: DataFrame, validation: bool, min_interactions: int) -> DataFrame:
    """Label each positive train / validation / test, latest first.

    The latest positive is the test item for users with at least
    ``min_interactions`` positives; the second-latest is the validation item
    when enabled and the user has one more; the rest is train.
    """
    latest_first = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("item_id").desc())
    per_user = Window.partitionBy("user_id")
    ranked = pos.withColumn("_rn", F.row_number().over(latest_first)) \
        .withColumn("_n", F.count(F.lit(1)).over(per_user))
    has_test = F.col("_n") >= F.lit(max(min_interactions, 2))
    split = (F.when(has_test & (F.col("_rn") == 1), F.lit(TEST))
             .when(F.lit(validation) & (F.col("_n") >= F.lit(max(min_interactions, 2) + 1))
                   & (F.col("_rn") == 2), F.lit(VALIDATION))
             .otherwise(F.lit(TRAIN)))
    return ranked.withColumn("split", split).drop("_rn", "_n")


SAMPLE_USERS_PER_SLICE = 1000  # users per output frame of train_samples (keeps Python workers small)


def train_samples(spark: SparkSession, fit_pos: DataFrame, universe: np.ndarray, negatives: int,
                  seed: int, epochs: list[int], weights: np.ndarray | None = None) -> DataFrame:
    """train_samples(user_id, item_id, label, epoch): positives + ``negatives`` each, per epoch of ``epochs``.

    Negatives are drawn from ``universe`` minus the user's positives in
    ``fit_pos`` (uniformly, or by ``weights``), seeded by (seed, epoch, user):
    the draws the trainer makes in-process for the same epoch.
    """
    bc = spark.sparkContext.broadcast((universe, weights))

    def expand(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        items, w = bc.value
        for batch in batches:  # in slices: each user yields (1 + negatives) rows per positive
            for start in range(0, len(batch), SAMPLE_USERS_PER_SLICE):
                for epoch in epochs:
                    yield samples_for_users(batch.iloc[start:start + SAMPLE_USERS_PER_SLICE], items, negatives,
                                            seed, epoch, w)

    blocks = fit_pos.groupBy("user_id").agg(F.collect_list("item_id").alias("pos_items"))
    schema = "user_id int, item_id int, label float, epoch int"
    return blocks.mapInPandas(expand, schema)


def eval_candidates(spark: SparkSession, targets: DataFrame, interactions: DataFrame,
                    universe: np.ndarray, count: int, seed: int) -> DataFrame:
    """eval_candidates(user_id, item_id, split, negatives): ``count`` distinct items
    the user never interacted with, for each validation/test target."""
    bc = spark.sparkContext.broadcast(universe)
    touched = interactions.groupBy("user_id").agg(F.collect_set("item_id").alias("exclude"))
    rows = targets.select("user_id", "item_id", "split").join(touched, "user_id")

    def draw(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        items = bc.value
        for batch in batches:
            negs = []
            for row in batch.itertuples(index=False):
                salt = EVAL_SALT + (0 if row.split == TEST else 1)
                rng = user_rng(seed, salt, row.user_id)
                negs.append(draw_negatives(rng, items, np.asarray(row.exclude, dtype=np.int64), count,
                                           distinct=True).astype(np.int32).tolist())
            yield pd.DataFrame({"user_id": batch["user_id"], "item_id": batch["item_id"],
                                "split": batch["split"], "negatives": negs})

    return rows.mapInPandas(draw, "user_id int, item_id int, split string, negatives array<int>")


def item_counts(positives: DataFrame, universe: np.ndarray) -> np.ndarray:
    """Positives per item of the sorted ``universe`` (one row per item collected)."""
    counts = positives.groupBy("item_id").count().toPandas()
    aligned = np.zeros(len(universe), dtype=np.int64)
    aligned[np.searchsorted(universe, counts["item_id"].to_numpy(np.int64))] = counts["count"].to_numpy()
    return aligned


def item_universe(interactions: DataFrame) -> np.ndarray:
    """Sorted ids of every item with at least one interaction (small: collected)."""
    ids = interactions.select("item_id").distinct().toPandas()["item_id"].to_numpy(np.int64)
    return np.sort(ids)


def build(spark: SparkSession, cfg: Config, interactions: DataFrame) -> SequenceTables:
    """The whole sequences stage as DataFrames (lazy; the caller writes them).

    ``train_samples`` (the ``eval`` scope's samples of ``train.sample_table_epochs``)
    is built only when that list is not empty.
    """
    pos = positives(interactions, cfg.implicit.min_rating)
    splits = split_latest(pos, cfg.split.validation, cfg.split.min_interactions)
    universe = item_universe(interactions)
    targets = splits.filter(F.col("split") != TRAIN)
    samples = None
    if cfg.train.sample_table_epochs:
        fit_pos = scope_positives(splits, EVAL).select("user_id", "item_id")
        weights = negative_weights(cfg.train, lambda: item_counts(fit_pos, universe))
        samples = train_samples(spark, fit_pos, universe, cfg.train.negatives, cfg.seed,
                                cfg.train.sample_table_epochs, weights)
    return SequenceTables(
        sequences=build_sequences(splits),
        splits=splits,
        eval_candidates=eval_candidates(spark, targets, interactions, universe,
                                        cfg.split.eval_negatives, cfg.seed),
        train_samples=samples,
    )
