"""Implicit feedback, time-ordered sequences, leave-latest-out split and negatives.

All Spark work runs on executors (window functions and collect_list +
mapInPandas over user blocks); nothing collects interactions to the driver.
Negative sampling is one numpy function, seeded per (seed, epoch, user), so
the same rows come out whatever the partitioning, and the trainer can call it
in-process for fresh negatives each epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from dser_spark.config import Config, TrainConfig

log = logging.getLogger("dser_spark")

TRAIN, VALIDATION, TEST = "train", "validation", "test"
EVAL_SALT = 1_000_003  # keeps evaluation draws independent of training epochs


@dataclass
class SequenceTables:
    """Output of the sequences stage."""

    sequences: DataFrame
    splits: DataFrame
    eval_candidates: DataFrame
    train_samples: DataFrame


def positives(interactions: DataFrame, min_rating: float) -> DataFrame:
    """Interactions that count as positive implicit feedback."""
    if min_rating <= 0:
        return interactions
    return interactions.filter(F.col("rating") >= F.lit(min_rating))


def build_sequences(pos: DataFrame) -> DataFrame:
    """sequences(user_id, item_ids, ts): each user's positives in time order (ties by item)."""
    ordered = F.array_sort(F.collect_list(F.struct("ts", "item_id")))
    return (pos.groupBy("user_id").agg(ordered.alias("events"))
            .select("user_id",
                    F.col("events.item_id").alias("item_ids"),
                    F.col("events.ts").alias("ts")))


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


def user_rng(seed: int, epoch: int, user_id: int) -> np.random.Generator:
    """The random stream of one user for one epoch (independent of partitioning)."""
    return np.random.default_rng([seed, epoch, int(user_id)])


def _count_in(universe: np.ndarray, values: np.ndarray) -> int:
    """How many of the unique ``values`` are in the sorted ``universe`` (O(len(values) log len(universe)))."""
    if not len(universe) or not len(values):
        return 0
    pos = np.clip(np.searchsorted(universe, values), 0, len(universe) - 1)
    return int(np.count_nonzero(universe[pos] == values))


def draw_negatives(rng: np.random.Generator, universe: np.ndarray, exclude: np.ndarray,
                   count: int, distinct: bool = False, cdf: np.ndarray | None = None) -> np.ndarray:
    """``count`` items from ``universe`` not in ``exclude`` (vectorised rejection).

    With ``distinct`` the items are without replacement. When fewer than
    ``count`` eligible items exist, all of them are returned (never loops forever).
    ``cdf`` (cumulative sampling weights aligned with ``universe``) gives
    weighted sampling by inversion; None is uniform.
    """
    exclude = np.unique(exclude)
    eligible_n = len(universe) - _count_in(universe, exclude)
    if eligible_n <= 0 or count <= 0:
        return np.empty(0, dtype=universe.dtype)
    if distinct and count >= eligible_n:
        return universe[~np.isin(universe, exclude, assume_unique=True)]
    picked: list[np.ndarray] = []
    need = count
    seen = exclude
    for _ in range(64):
        oversample = int(need * len(universe) / eligible_n * 1.2) + 8
        if cdf is None:
            cand = universe[rng.integers(0, len(universe), size=oversample)]
        else:
            picks = np.searchsorted(cdf, rng.random(oversample) * cdf[-1], side="right")
            cand = universe[np.minimum(picks, len(universe) - 1)]
        cand = cand[~np.isin(cand, seen)]
        if distinct:
            _, first = np.unique(cand, return_index=True)
            cand = cand[np.sort(first)]
        cand = cand[:need]
        picked.append(cand)
        need -= len(cand)
        if distinct:
            seen = np.union1d(seen, cand)
        if need == 0:
            break
    return np.concatenate(picked)


def popularity_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Sampling probabilities proportional to ``(count + 1) ** power`` (every item stays possible)."""
    w = (np.asarray(counts, dtype=np.float64) + 1.0) ** power
    return w / w.sum()


def negative_weights(fit_pos: DataFrame, universe: np.ndarray, train: TrainConfig) -> np.ndarray | None:
    """``train.negative_sampling``'s weights over ``universe`` (None = uniform) from the fit positives."""
    if train.negative_sampling == "uniform":
        return None
    counts = fit_pos.groupBy("item_id").count().toPandas()
    aligned = np.zeros(len(universe), dtype=np.int64)
    aligned[np.searchsorted(universe, counts["item_id"].to_numpy(np.int64))] = counts["count"].to_numpy()
    return popularity_weights(aligned, train.popularity_power)


SAMPLE_USERS_PER_SLICE = 1000  # users per output frame of train_samples (keeps Python workers small)


def train_samples(spark: SparkSession, fit_pos: DataFrame, universe: np.ndarray, negatives: int,
                  seed: int, epoch: int, weights: np.ndarray | None = None) -> DataFrame:
    """train_samples(user_id, item_id, label, epoch): positives + ``negatives`` each.

    Negatives are drawn from ``universe`` minus the user's positives in
    ``fit_pos`` (uniformly, or by ``weights``), seeded by (seed, epoch, user).
    """
    bc = spark.sparkContext.broadcast((universe, weights))

    def expand(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        items, w = bc.value
        for batch in batches:  # in slices: each user yields (1 + negatives) rows per positive
            for start in range(0, len(batch), SAMPLE_USERS_PER_SLICE):
                yield samples_for_users(batch.iloc[start:start + SAMPLE_USERS_PER_SLICE], items, negatives, seed,
                                        epoch, w)

    blocks = fit_pos.groupBy("user_id").agg(F.collect_list("item_id").alias("pos_items"))
    schema = "user_id int, item_id int, label float, epoch int"
    return blocks.mapInPandas(expand, schema)


def samples_for_users(batch: pd.DataFrame, universe: np.ndarray, negatives: int, seed: int,
                      epoch: int, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Positives (label 1) plus drawn negatives (label 0) for a block of users.

    ``batch`` has columns user_id, pos_items; negatives are never one of the
    user's positives. Used by Spark and by the in-process trainer.
    """
    users, items, labels = [], [], []
    cdf = None if weights is None else np.cumsum(weights)
    for row in batch.itertuples(index=False):
        pos = np.asarray(row.pos_items, dtype=np.int64)
        neg = draw_negatives(user_rng(seed, epoch, row.user_id), universe, pos,
                             len(pos) * negatives, cdf=cdf)
        if len(neg) < len(pos) * negatives:
            log.warning("user %s: only %d eligible negatives", row.user_id, len(neg))
        users.append(np.full(len(pos) + len(neg), row.user_id, dtype=np.int32))
        items.append(np.concatenate([pos, neg]).astype(np.int32))
        labels.append(np.concatenate([np.ones(len(pos), np.float32), np.zeros(len(neg), np.float32)]))
    if not users:
        return pd.DataFrame({"user_id": pd.Series([], dtype="int32"), "item_id": pd.Series([], dtype="int32"),
                             "label": pd.Series([], dtype="float32"), "epoch": pd.Series([], dtype="int32")})
    n = sum(len(u) for u in users)
    return pd.DataFrame({"user_id": np.concatenate(users), "item_id": np.concatenate(items),
                         "label": np.concatenate(labels), "epoch": np.full(n, epoch, dtype=np.int32)})


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


def item_universe(interactions: DataFrame) -> np.ndarray:
    """Sorted ids of every item with at least one interaction (small: collected)."""
    ids = interactions.select("item_id").distinct().toPandas()["item_id"].to_numpy(np.int64)
    return np.sort(ids)


def build(spark: SparkSession, cfg: Config, interactions: DataFrame) -> SequenceTables:
    """The whole sequences stage as DataFrames (lazy; the caller writes them)."""
    pos = positives(interactions, cfg.implicit.min_rating)
    splits = split_latest(pos, cfg.split.validation, cfg.split.min_interactions)
    universe = item_universe(interactions)
    targets = splits.filter(F.col("split") != TRAIN)
    fit_pos = splits.filter(F.col("split") != TEST).select("user_id", "item_id")
    return SequenceTables(
        sequences=build_sequences(pos),
        splits=splits,
        eval_candidates=eval_candidates(spark, targets, interactions, universe,
                                        cfg.split.eval_negatives, cfg.seed),
        train_samples=train_samples(spark, fit_pos, universe, cfg.train.negatives, cfg.seed, cfg.train.epoch,
                                    negative_weights(fit_pos, universe, cfg.train)),
    )
