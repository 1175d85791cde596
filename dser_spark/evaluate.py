"""Evaluation on the NCF protocol: the held-out item among sampled negatives.

HR@K = share of users whose held-out item ranks in the top K; NDCG@K =
ln 2 / ln(rank + 2) for a hit at 0-based ``rank``. Ties count against the
held-out item, so a constant scorer gets no credit.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from dser_spark.train import Trained

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (user_ids (n,), item_ids (n, m)) -> scores (n, m)

METRICS_SCHEMA = "run_id string, model string, protocol string, metric string, k int, value double"


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


def model_scorer(trained: Trained, batch: int = 4096) -> Scorer:
    """Scores of a trained DSER model; unknown users or items score -inf."""

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        u = np.searchsorted(trained.user_ids, users)
        i = np.searchsorted(trained.item_ids, items)
        u_known = (u < len(trained.user_ids)) & (trained.user_ids[np.minimum(u, len(trained.user_ids) - 1)] == users)
        i_known = (i < len(trained.item_ids)) & (trained.item_ids[np.minimum(i, len(trained.item_ids) - 1)] == items)
        out = np.full(items.shape, -np.inf, dtype=np.float64)
        uu = np.broadcast_to(np.minimum(u, len(trained.user_ids) - 1)[:, None], items.shape).ravel()
        ii = np.minimum(i, len(trained.item_ids) - 1).ravel()
        flat = np.empty(len(ii), dtype=np.float64)
        with torch.no_grad():
            for s in range(0, len(ii), batch * items.shape[1]):
                e = s + batch * items.shape[1]
                flat[s:e] = trained.model(torch.from_numpy(uu[s:e]), torch.from_numpy(ii[s:e])).numpy()
        known = u_known[:, None] & i_known
        out[known] = flat.reshape(items.shape)[known]
        return out

    return score


def popularity_scorer(counts: pd.Series) -> Scorer:
    """ItemPop: an item's number of fit-scope positives (0 if never seen)."""
    lookup = counts.to_dict()

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.vectorize(lambda i: lookup.get(int(i), 0), otypes=[np.float64])(items)

    return score


def metric_rows(run_id: str, model: str, protocol: str, values: dict[tuple[str, int], float]) -> pd.DataFrame:
    """Rows of the ``metrics`` table for one model and protocol."""
    return pd.DataFrame([{"run_id": run_id, "model": model, "protocol": protocol, "metric": m,
                          "k": int(k), "value": float(v)} for (m, k), v in sorted(values.items())])
