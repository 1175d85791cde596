"""The driver-side evaluation as it was before it moved to the executors (commit 896cc37), kept only as the
reference the executor path must equal: every model ranked over all items in driver numpy, the test users in
id order, the DSER family through the scoring kernel 64 users at a time.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from dser_spark.artifacts import Trained
from dser_spark.evaluate import Scorer, hit_ratio, metric_rows, ndcg, sampled_metrics
from dser_spark.ids import lookup
from dser_spark.scoring import Kernel

Ranker = Callable[[np.ndarray], np.ndarray]  # user_ids (n,) -> scores (n, I) over the item universe


def full_metrics(ranker: Ranker, item_ids: np.ndarray, users: np.ndarray, targets: np.ndarray,
                 history: list[np.ndarray], ks: list[int], block: int = 256,
                 coverage_k: int = 10) -> dict[tuple[str, int], float]:
    """{(metric, k): value}: Recall@K, NDCG@K, MRR (k=0) and Coverage@coverage_k."""
    n_items = len(item_ids)
    ranks = np.full(len(users), n_items, dtype=np.int64)
    in_top = np.zeros(n_items, dtype=bool)
    for start in range(0, len(users), block):
        stop = min(start + block, len(users))
        scores = np.asarray(ranker(users[start:stop]), dtype=np.float64).copy()
        rows = np.concatenate([np.full(len(h), r) for r, h in enumerate(history[start:stop])] or [np.empty(0, int)])
        cols, ok = lookup(item_ids, np.concatenate(history[start:stop] or [np.empty(0, int)]))
        scores[rows[ok], cols[ok]] = -np.inf
        t, known = lookup(item_ids, targets[start:stop])
        r_idx = np.arange(stop - start)
        target_scores = scores[r_idx, t]
        scores[r_idx[known], t[known]] = -np.inf
        above = (scores >= target_scores[:, None]).sum(axis=1)
        ranks[start:stop] = np.where(known & np.isfinite(target_scores), above, n_items)
        kk = min(coverage_k, n_items)
        scores[r_idx[known], t[known]] = target_scores[known]
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        finite = np.isfinite(np.take_along_axis(scores, top, axis=1))
        in_top[top[finite]] = True
    out: dict[tuple[str, int], float] = {}
    for k in ks:
        out[("Recall", k)] = hit_ratio(ranks, k)
        out[("NDCG", k)] = ndcg(ranks, k)
    out[("MRR", 0)] = float(np.where(ranks < n_items, 1.0 / (ranks + 1.0), 0.0).mean()) if len(ranks) else 0.0
    out[("Coverage", coverage_k)] = float(in_top.mean()) if n_items else 0.0
    return out


def model_ranker(trained: Trained, user_block: int = 64) -> Ranker:
    """All-items scores of a trained DSER model through the scoring kernel."""
    model = trained.model
    kernel = Kernel(model, torch.arange(len(trained.item_ids)))

    def rank(users: np.ndarray) -> np.ndarray:
        u, known = lookup(trained.user_ids, users)
        out = np.full((len(users), len(trained.item_ids)), -np.inf)
        with torch.no_grad():
            for s in range(0, len(users), user_block):
                rows = np.flatnonzero(known[s:s + user_block]) + s
                if len(rows):
                    parts = kernel.users(model.user_part(torch.from_numpy(u[rows])))
                    out[rows] = kernel.logits(parts, 0, kernel.n_items).double().numpy()
        return out

    return rank


def dense_ranker(user_ids: np.ndarray, user_factors: np.ndarray, item_factors: np.ndarray) -> Ranker:
    """Dot-product scores of factor matrices aligned with sorted ``user_ids`` and the item universe."""

    def rank(users: np.ndarray) -> np.ndarray:
        u, known = lookup(user_ids, users)
        out = np.full((len(users), item_factors.shape[0]), -np.inf)
        out[known] = user_factors[u[known]] @ item_factors.T
        return out

    return rank


def ranker_scorer(ranker: Ranker, item_ids: np.ndarray) -> Scorer:
    """A sampled-protocol scorer reading its candidates' columns out of all-items scores."""

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = np.full(items.shape, -np.inf)
        for s in range(0, len(users), 512):
            full = ranker(users[s:s + 512])
            cols, ok = lookup(item_ids, items[s:s + 512])
            picked = np.take_along_axis(full, cols, axis=1)
            out[s:s + 512] = np.where(ok, picked, -np.inf)
        return out

    return score


def popularity_ranker(counts: pd.Series, item_ids: np.ndarray) -> Ranker:
    """ItemPop over the universe: fit-scope positives per item (0 if never seen)."""
    row = counts.reindex(item_ids).fillna(0).to_numpy(np.float64)

    def rank(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(row, (len(users), len(item_ids))).copy()

    return rank


def evaluate_rankers(rankers: dict[str, Ranker], test: pd.DataFrame, item_ids: np.ndarray,
                     history: dict[int, np.ndarray], ks: list[int], full_ranking: bool,
                     coverage_k: int) -> pd.DataFrame:
    """Metric rows of every ranker on the test candidates (sorted by user): sampled, and full ranking if asked."""
    users = test["user_id"].to_numpy(np.int64)
    seen = [history.get(int(u), np.empty(0, np.int64)) for u in users]
    frames = []
    for name, ranker in rankers.items():
        frames.append(metric_rows(name, "sampled", sampled_metrics(ranker_scorer(ranker, item_ids), test, ks)))
        if full_ranking:
            full = full_metrics(ranker, item_ids, users, test["item_id"].to_numpy(np.int64), seen, ks,
                                coverage_k=coverage_k)
            frames.append(metric_rows(name, "full", full))
    return pd.concat(frames, ignore_index=True)
