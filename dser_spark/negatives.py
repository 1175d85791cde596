"""Negative sampling: one seeded numpy function for the Spark job and the trainer.

A user's negatives for an epoch come from their own random stream, seeded by
(seed, epoch, user), so the same items are drawn whatever the partitioning,
and the ``train_samples`` table (a Spark job) equals what training draws
in-process for the same epoch.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pandas as pd

from dser_spark.config import TrainConfig
from dser_spark.ids import lookup

log = logging.getLogger("dser_spark")


def user_rng(seed: int, epoch: int, user_id: int) -> np.random.Generator:
    """The random stream of one user for one epoch (independent of partitioning)."""
    return np.random.default_rng([seed, epoch, int(user_id)])


def draw_negatives(rng: np.random.Generator, universe: np.ndarray, exclude: np.ndarray,
                   count: int, distinct: bool = False, cdf: np.ndarray | None = None) -> np.ndarray:
    """``count`` items from ``universe`` not in ``exclude`` (vectorised rejection).

    With ``distinct`` the items are without replacement. When fewer than
    ``count`` eligible items exist, all of them are returned (never loops forever).
    ``cdf`` (cumulative sampling weights aligned with ``universe``) gives
    weighted sampling by inversion; None is uniform.
    """
    exclude = np.unique(exclude)
    eligible_n = len(universe) - int(np.count_nonzero(lookup(universe, exclude)[1]))
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


def negative_weights(train: TrainConfig, item_counts: Callable[[], np.ndarray]) -> np.ndarray | None:
    """``train.negative_sampling``'s probabilities over the item universe (None = uniform).

    ``item_counts`` returns the fit positives per universe item; it is only
    called for popularity sampling.
    """
    if train.negative_sampling == "uniform":
        return None
    return popularity_weights(item_counts(), train.popularity_power)


def user_negatives(user_id: int, positives: np.ndarray, universe: np.ndarray, negatives: int, seed: int,
                   epoch: int, cdf: np.ndarray | None = None) -> np.ndarray:
    """One user's ``negatives`` draws per positive for ``epoch`` (fewer, with a warning, when too few items
    are eligible); ``cdf``: cumulative sampling weights over ``universe`` (None: uniform)."""
    pos = np.asarray(positives, dtype=np.int64)
    neg = draw_negatives(user_rng(seed, epoch, user_id), universe, pos, len(pos) * negatives, cdf=cdf)
    if len(neg) < len(pos) * negatives:
        log.warning("user %s: only %d eligible negatives", user_id, len(neg))
    return neg


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
        neg = user_negatives(row.user_id, pos, universe, negatives, seed, epoch, cdf)
        users.append(np.full(len(pos) + len(neg), row.user_id, dtype=np.int32))
        items.append(np.concatenate([pos, neg]).astype(np.int32))
        labels.append(np.concatenate([np.ones(len(pos), np.float32), np.zeros(len(neg), np.float32)]))
    if not users:
        return pd.DataFrame({"user_id": pd.Series([], dtype="int32"), "item_id": pd.Series([], dtype="int32"),
                             "label": pd.Series([], dtype="float32"), "epoch": pd.Series([], dtype="int32")})
    n = sum(len(u) for u in users)
    return pd.DataFrame({"user_id": np.concatenate(users), "item_id": np.concatenate(items),
                         "label": np.concatenate(labels), "epoch": np.full(n, epoch, dtype=np.int32)})
