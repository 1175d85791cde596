"""Evaluation: the NCF sampled protocol and full ranking.

Sampled (He et al. 2017): the held-out item among its sampled negatives.
HR@K = share of users whose held-out item ranks in the top K; NDCG@K =
ln 2 / ln(rank + 2) for a hit at 0-based ``rank``.
Full ranking (Krichene and Rendle 2020): the held-out item among every item of
the universe that is not in the user's fit history; Recall@K (one relevant
item, so = HR@K), NDCG@K, MRR and top-10 catalogue coverage.
In both, ties count against the held-out item, so a constant scorer gets no credit.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from dser_spark.artifacts import Trained
from dser_spark.ids import lookup
from dser_spark.scoring import Kernel

log = logging.getLogger("dser_spark")

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (user_ids (n,), item_ids (n, m)) -> scores (n, m)
Ranker = Callable[[np.ndarray], np.ndarray]  # user_ids (n,) -> scores (n, I) over the item universe

METRICS_SCHEMA = ("run_id string, dt string, model_id string, model string, protocol string, metric string, "
                  "k int, value double")


def target_ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of column 0 (the held-out item) in each row; ties rank it lower."""
    return (scores[:, 1:] >= scores[:, :1]).sum(axis=1)


def hit_ratio(ranks: np.ndarray, k: int) -> float:
    """Share of rows whose held-out item is in the top ``k``."""
    return float((ranks < k).mean()) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean ln 2 / ln(rank + 2) over rows, 0 for misses."""
    if not len(ranks):
        return 0.0
    gains = np.where(ranks < k, np.log(2) / np.log(ranks + 2.0), 0.0)
    return float(gains.mean())


PAD = -1  # item id filling short candidate rows (users who touched nearly every item)


def candidate_matrix(candidates: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids, items): held-out item in column 0, its negatives after, PAD-filled."""
    rows = [[t, *negs] for t, negs in zip(candidates["item_id"], candidates["negatives"])]
    width = max((len(r) for r in rows), default=1)
    items = np.full((len(rows), width), PAD, dtype=np.int64)
    for r, row in enumerate(rows):
        items[r, :len(row)] = row
    return candidates["user_id"].to_numpy(np.int64), items


def sampled_metrics(scorer: Scorer, candidates: pd.DataFrame, ks: list[int]) -> dict[tuple[str, int], float]:
    """{(metric, k): value} for HR and NDCG on the sampled protocol."""
    users, items = candidate_matrix(candidates)
    scores = np.where(items == PAD, -np.inf, scorer(users, items))
    ranks = target_ranks(scores)
    out = {}
    for k in ks:
        out[("HR", k)] = hit_ratio(ranks, k)
        out[("NDCG", k)] = ndcg(ranks, k)
    return out


def full_metrics(ranker: Ranker, item_ids: np.ndarray, users: np.ndarray, targets: np.ndarray,
                 history: list[np.ndarray], ks: list[int], block: int = 256,
                 coverage_k: int = 10) -> dict[tuple[str, int], float]:
    """{(metric, k): value}: Recall@K, NDCG@K, MRR (k=0) and Coverage@coverage_k.

    Each user's ``targets`` item is ranked against every item of ``item_ids``
    (sorted) except the user's ``history`` (the items the fit saw for that
    user); ties count against the target. Coverage = share of the catalogue
    appearing in at least one user's top ``coverage_k``.
    """
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
        scores[r_idx[known], t[known]] = -np.inf  # the target never counts against itself
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
    """All-items scores of a trained DSER model through the scoring kernel (as ``recommend`` scores)."""
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


def model_scorer(trained: Trained, batch: int = 4096) -> Scorer:
    """Scores of a trained DSER model; unknown users or items score -inf."""

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        u, u_known = lookup(trained.user_ids, users)
        i, i_known = lookup(trained.item_ids, items)
        out = np.full(items.shape, -np.inf, dtype=np.float64)
        uu = np.broadcast_to(u[:, None], items.shape).ravel()
        ii = i.ravel()
        flat = np.empty(len(ii), dtype=np.float64)
        with torch.no_grad():
            for s in range(0, len(ii), batch * items.shape[1]):
                e = s + batch * items.shape[1]
                flat[s:e] = trained.model(torch.from_numpy(uu[s:e]), torch.from_numpy(ii[s:e])).numpy()
        known = u_known[:, None] & i_known
        out[known] = flat.reshape(items.shape)[known]
        return out

    return score


def metric_rows(model: str, protocol: str, values: dict[tuple[str, int], float]) -> pd.DataFrame:
    """Rows (model, protocol, metric, k, value) of one model and protocol."""
    return pd.DataFrame([{"model": model, "protocol": protocol, "metric": m, "k": int(k), "value": float(v)}
                         for (m, k), v in sorted(values.items())])


def evaluate_rankers(rankers: dict[str, Ranker], test: pd.DataFrame, item_ids: np.ndarray,
                     history: dict[int, np.ndarray], ks: list[int], full_ranking: bool, coverage_k: int,
                     log_k: int) -> pd.DataFrame:
    """Metric rows of every ranker on the test candidates: sampled, and full ranking if asked.

    ``history`` holds each user's fit-scope items, excluded from the full ranking.
    """
    users = test["user_id"].to_numpy(np.int64)
    seen = [history.get(int(u), np.empty(0, np.int64)) for u in users]
    frames = []
    for name, ranker in rankers.items():
        started = time.time()
        sampled = sampled_metrics(ranker_scorer(ranker, item_ids), test, ks)
        frames.append(metric_rows(name, "sampled", sampled))
        if full_ranking:
            full = full_metrics(ranker, item_ids, users, test["item_id"].to_numpy(np.int64), seen, ks,
                                coverage_k=coverage_k)
            frames.append(metric_rows(name, "full", full))
        log.info("evaluate: %s HR@%d %.4f (%.0fs)", name, log_k, sampled[("HR", log_k)], time.time() - started)
    return pd.concat(frames, ignore_index=True)
