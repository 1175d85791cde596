"""Exact top-K for every user over the items they have not interacted with.

Runs as ``mapInPandas`` over blocks of users with the model files broadcast
once and loaded once per Python worker. Per user block, item parts are
scored block by block with a running top-K (never an all-pairs matrix).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dser_spark.train import Trained, load_from_bytes

RECS_SCHEMA = "user_id int, rank int, item_id int, score float"

_WORKER_MODELS: dict[str, Trained] = {}


def top_k_block(trained: Trained, user_ids: np.ndarray, seen: list[np.ndarray], k: int,
                item_block: int = 4096) -> pd.DataFrame:
    """Exact top-``k`` (user_id, rank, item_id, score) for users known to the model.

    Items in ``seen[row]`` are excluded; ties are broken by smaller item id.
    """
    model, n_items = trained.model, len(trained.item_ids)
    u = torch.from_numpy(np.searchsorted(trained.user_ids, user_ids))
    mask_rows = np.concatenate([np.full(len(s), r) for r, s in enumerate(seen)]) if seen else np.empty(0, int)
    mask_cols = np.searchsorted(trained.item_ids, np.concatenate(seen)) if seen else np.empty(0, int)
    keep = (mask_cols < n_items)
    keep[keep] &= trained.item_ids[mask_cols[keep]] == np.concatenate(seen)[keep]
    mask_rows, mask_cols = mask_rows[keep], mask_cols[keep]
    kk = min(k, n_items)
    best_s = torch.full((len(user_ids), 0), -torch.inf)
    best_i = torch.zeros((len(user_ids), 0), dtype=torch.long)
    with torch.no_grad():
        user_parts = model.user_part(u)
        for start in range(0, n_items, item_block):
            stop = min(start + item_block, n_items)
            logits = model.score_block(user_parts, model.item_part(torch.arange(start, stop)))
            in_block = (mask_cols >= start) & (mask_cols < stop)
            logits[torch.from_numpy(mask_rows[in_block]), torch.from_numpy(mask_cols[in_block] - start)] = -torch.inf
            # subtracting a tiny rank of the item index is not exact; instead keep k + ties via sort
            cand_s = torch.cat([best_s, logits], dim=1)
            cand_i = torch.cat([best_i, torch.arange(start, stop).expand(len(user_ids), -1)], dim=1)
            best_s, pos = _top_with_ties(cand_s, cand_i, kk)
            best_i = torch.gather(cand_i, 1, pos)
    return _rows(user_ids, best_s, best_i, trained.item_ids)


def _top_with_ties(scores: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` positions per row, ordered by score desc then item index asc."""
    # Sort by index first, then a stable sort by score keeps index order among ties.
    by_idx = torch.argsort(idx, dim=1, stable=True)
    s_sorted = torch.gather(scores, 1, by_idx)
    by_score = torch.argsort(s_sorted, dim=1, descending=True, stable=True)[:, :k]
    pos = torch.gather(by_idx, 1, by_score)
    return torch.gather(scores, 1, pos), pos


def _rows(user_ids: np.ndarray, best_s: torch.Tensor, best_i: torch.Tensor, item_ids: np.ndarray) -> pd.DataFrame:
    """Flatten per-user top lists into rows, dropping excluded (-inf) slots."""
    b, k = best_s.shape
    scores = torch.sigmoid(best_s).numpy().ravel()
    valid = np.isfinite(best_s.numpy().ravel())
    return pd.DataFrame({
        "user_id": np.repeat(user_ids, k).astype(np.int32)[valid],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), b)[valid],
        "item_id": item_ids[best_i.numpy().ravel()].astype(np.int32)[valid],
        "score": scores.astype(np.float32)[valid],
    })


def _worker_model(run_id: str, files: dict[str, bytes]) -> Trained:
    """Load the broadcast model once per Python worker."""
    if run_id not in _WORKER_MODELS:
        _WORKER_MODELS.clear()
        _WORKER_MODELS[run_id] = load_from_bytes(files)
    return _WORKER_MODELS[run_id]


def recommend_all(spark: SparkSession, files: dict[str, bytes], run_id: str, users: DataFrame,
                  interactions: DataFrame, k: int, user_block: int, exclude_seen: bool = True) -> DataFrame:
    """recommendations(user_id, rank, item_id, score) for every user in ``users``."""
    bc = spark.sparkContext.broadcast(files)
    seen = interactions.groupBy("user_id").agg(F.collect_set("item_id").alias("seen"))
    blocks = users.select("user_id").distinct().join(seen, "user_id", "left")

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        torch.set_num_threads(max(1, int(ctx.cpus())) if ctx else 1)
        trained = _worker_model(run_id, bc.value)
        for batch in batches:
            batch = batch.sort_values("user_id")
            for start in range(0, len(batch), user_block):
                part = batch.iloc[start:start + user_block]
                seen_lists = [np.asarray(s if (exclude_seen and s is not None) else [], dtype=np.int64)
                              for s in part["seen"]]
                yield top_k_block(trained, part["user_id"].to_numpy(np.int64), seen_lists, k)

    return blocks.mapInPandas(score, RECS_SCHEMA)
