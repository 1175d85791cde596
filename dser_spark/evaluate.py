"""Evaluation: the NCF sampled protocol and full ranking, as a Spark job over blocks of test users.

Sampled (He et al. 2017): the held-out item among its sampled negatives.
HR@K = share of users whose held-out item ranks in the top K; NDCG@K =
ln 2 / ln(rank + 2) for a hit at 0-based ``rank``.
Full ranking (Krichene and Rendle 2020): the held-out item among every item of
the universe that is not in the user's fit history; Recall@K (one relevant
item, so = HR@K), NDCG@K, MRR and top-K catalogue coverage.
In both, ties count against the held-out item, so a constant scorer gets no credit.

Models ship to the executors as ``recommend`` ships its model (one broadcast of
artifact bytes and arrays, built once per Python worker): the DSER family as
model files scored by ``scoring.Kernel``, ItemPop as one row of scores, ALS as
item factors with each user's factors joined to the user's row. The test users
are numbered in id order and cut into blocks of ``evaluate.user_block``; each
block is scored once per model over the whole item universe, and only metric
sums (users, hits, NDCG and reciprocal-rank sums, the items of the top lists)
come back to the driver, which divides. Blocks follow the user order, not the
partitioning, so the scores, and so the metrics, do not depend on how many
partitions or executors there are.

The early-stopping validation of training scores pairs on the driver
(``model_scorer``, ``sampled_metrics``).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dser_spark.artifacts import Trained, load_from_bytes, model_bytes, save_artifacts
from dser_spark.baselines import Factors
from dser_spark.config import Config, EvaluateConfig
from dser_spark.ids import lookup
from dser_spark.scoring import Kernel, on_worker, task_threads

log = logging.getLogger("dser_spark")

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (user_ids (n,), item_ids (n, m)) -> scores (n, m)
BlockScorer = Callable[[pd.DataFrame], np.ndarray]  # a block's user rows -> scores (n, I) over the universe

METRICS_SCHEMA = ("run_id string, dt string, model_id string, model string, protocol string, metric string, "
                  "k int, value double")
SUMS_SCHEMA = "model string, protocol string, metric string, k int, value double, items array<int>"
PAD = -1  # item id filling short candidate rows (users who touched nearly every item)
MISS = np.iinfo(np.int32).max  # the sampled rank of a held-out item the model cannot score
_EMPTY = np.empty(0, dtype=np.int64)


# ----------------------------------------------------------------- metrics
def target_ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of column 0 (the held-out item) in each row; ties rank it lower."""
    return (scores[:, 1:] >= scores[:, :1]).sum(axis=1)


def gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """ln 2 / ln(rank + 2) of each rank below ``k``, 0 for the others."""
    return np.where(ranks < k, np.log(2) / np.log(ranks + 2.0), 0.0)


def hit_ratio(ranks: np.ndarray, k: int) -> float:
    """Share of rows whose held-out item is in the top ``k``."""
    return float((ranks < k).mean()) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean ln 2 / ln(rank + 2) over rows, 0 for misses."""
    return float(gains(ranks, k).mean()) if len(ranks) else 0.0


def candidate_matrix(candidates: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids, items): held-out item in column 0, its negatives after, PAD-filled."""
    rows = [[t, *negs] for t, negs in zip(candidates["item_id"], candidates["negatives"])]
    width = max((len(r) for r in rows), default=1)
    items = np.full((len(rows), width), PAD, dtype=np.int64)
    for r, row in enumerate(rows):
        items[r, :len(row)] = row
    return candidates["user_id"].to_numpy(np.int64), items


def sampled_metrics(scorer: Scorer, candidates: pd.DataFrame, ks: list[int]) -> dict[tuple[str, int], float]:
    """{(metric, k): value} for HR and NDCG on the sampled protocol (the training's validation, on the driver)."""
    users, items = candidate_matrix(candidates)
    scores = np.where(items == PAD, -np.inf, scorer(users, items))
    ranks = target_ranks(scores)
    out = {}
    for k in ks:
        out[("HR", k)] = hit_ratio(ranks, k)
        out[("NDCG", k)] = ndcg(ranks, k)
    return out


def full_hit_ratio(trained: Trained, candidates: pd.DataFrame, history: list[np.ndarray], k: int,
                   block: int = 1024) -> float:
    """HR@k of each candidate user's held-out item ranked against every item of the model outside the user's
    ``history`` (item ids, aligned with ``trained.user_ids``): full ranking on the driver (the training's
    validation). Users the model does not know count as misses."""
    model, n = trained.model, len(trained.item_ids)
    kernel = Kernel(model, torch.arange(n))
    users, known = lookup(trained.user_ids, candidates["user_id"].to_numpy(np.int64))
    users, frame = users[known], candidates[known].assign(history=[history[u] for u in users[known]])
    hits = 0
    with torch.no_grad():
        for s in range(0, len(users), block):
            parts = kernel.users(model.user_part(torch.from_numpy(users[s:s + block])))
            scores = kernel.logits(parts, 0, n).double().numpy()  # a copy: full_ranks overwrites it
            ranks, _ = full_ranks(scores, trained.item_ids, frame.iloc[s:s + block], 1)
            hits += int((ranks < k).sum())
    return hits / max(len(candidates), 1)


def model_scorer(trained: Trained, batch: int = 4096) -> Scorer:
    """Scores of a trained DSER model on (user, item) pairs; unknown users or items score -inf."""

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


# ------------------------------------------------------------------ models
@dataclass
class KernelModel:
    """A DSER-family model as its artifact files (safetensors, config, indexes), scored by the kernel."""

    files: dict[str, bytes]


@dataclass
class FixedScores:
    """The same scores over the item universe for every user (ItemPop)."""

    scores: np.ndarray


Model = KernelModel | FixedScores | Factors


def model_files(trained: Trained, cfg: Config) -> dict[str, bytes]:
    """The artifact files of a model fitted in this process, to ship like a stored one."""
    with tempfile.TemporaryDirectory() as tmp:
        save_artifacts(trained, cfg, Path(tmp))
        return model_bytes(Path(tmp))


def factor_column(name: str) -> str:
    """The user-row column holding model ``name``'s user factors."""
    return f"factors_{name}"


def shipped(model: Model) -> dict:
    """What a model broadcasts to the executors: bytes and arrays (ALS user factors go with the user rows)."""
    if isinstance(model, KernelModel):
        return {"files": model.files}
    if isinstance(model, FixedScores):
        return {"scores": model.scores}
    return {"item_factors": model.item_factors}


def block_scorer(name: str, model: dict, universe: np.ndarray) -> BlockScorer:
    """Scores (n, I) of a block's users over the universe from a ``shipped`` model; -inf where unknown."""
    n_items = len(universe)
    if "scores" in model:
        return lambda block: np.broadcast_to(model["scores"], (len(block), n_items)).copy()
    if "item_factors" in model:
        column = factor_column(name)

        def factor_scores(block: pd.DataFrame) -> np.ndarray:
            out = np.full((len(block), n_items), -np.inf)
            known = block[column].notna().to_numpy()
            if known.any():
                out[known] = np.stack(block[column][known].to_numpy()) @ model["item_factors"].T
            return out

        return factor_scores
    trained = load_from_bytes(model["files"])
    idx, found = lookup(trained.item_ids, universe)
    kernel = Kernel(trained.model, torch.from_numpy(idx[found]))
    columns = np.flatnonzero(found)

    @torch.no_grad()
    def kernel_scores(block: pd.DataFrame) -> np.ndarray:
        u, known = lookup(trained.user_ids, block["user_id"].to_numpy(np.int64))
        out = np.full((len(block), n_items), -np.inf)
        rows = np.flatnonzero(known)
        if len(rows):
            parts = kernel.users(trained.model.user_part(torch.from_numpy(u[rows])))
            out[np.ix_(rows, columns)] = kernel.logits(parts, 0, kernel.n_items).double().numpy()
        return out

    return kernel_scores


# ----------------------------------------------------------- one user block
def sampled_ranks(scores: np.ndarray, universe: np.ndarray, block: pd.DataFrame) -> np.ndarray:
    """Rank of each user's held-out item among its negatives (``MISS`` where the model cannot score it)."""
    _, items = candidate_matrix(block)
    cols, ok = lookup(universe, items)
    picked = np.where(ok, np.take_along_axis(scores, cols, axis=1), -np.inf)
    return np.where(np.isfinite(picked[:, 0]), target_ranks(picked), MISS)


def full_ranks(scores: np.ndarray, universe: np.ndarray, block: pd.DataFrame,
               coverage_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, top): rank of each user's held-out item among every universe item outside the user's
    ``history`` (``len(universe)`` where it cannot be scored), and the universe indexes of the users'
    top-``coverage_k`` items. ``scores`` is overwritten."""
    n_items, n = len(universe), len(block)
    history = [_EMPTY if h is None else h for h in block["history"]]
    rows = np.repeat(np.arange(n), [len(h) for h in history])
    cols, ok = lookup(universe, np.concatenate([_EMPTY, *history]))
    scores[rows[ok], cols[ok]] = -np.inf
    t, known = lookup(universe, block["item_id"].to_numpy(np.int64))
    r = np.arange(n)
    target = scores[r, t]
    scores[r[known], t[known]] = -np.inf  # the target never counts against itself
    ranks = np.where(known & np.isfinite(target), (scores >= target[:, None]).sum(axis=1), n_items)
    scores[r[known], t[known]] = target[known]
    kk = min(coverage_k, n_items)
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    return ranks, top[np.isfinite(np.take_along_axis(scores, top, axis=1))]


def rank_sums(ranks: np.ndarray, ks: list[int], n_items: int | None = None) -> Counter:
    """The metrics' numerators over a block: users, hits@k, NDCG@k sums (and the reciprocal-rank sum,
    ranks at ``n_items`` counting 0, when ``n_items`` is given)."""
    out = Counter({("users", 0): len(ranks)})
    for k in ks:
        out[("hits", k)] = int((ranks < k).sum())
        out[("ndcg", k)] = float(gains(ranks, k).sum())
    if n_items is not None:
        out[("rr", 0)] = float(np.where(ranks < n_items, 1.0 / (ranks + 1.0), 0.0).sum())
    return out


def blocks(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """The rows of one ``block`` at a time, from batches sorted by block (a block may span batches)."""
    carry = None
    for batch in batches:
        rows = batch if carry is None else pd.concat([carry, batch], ignore_index=True)
        if not len(rows):
            continue
        ids = rows["block"].to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        for start, stop in zip(starts[:-1], starts[1:]):
            yield rows.iloc[start:stop]
        carry = rows.iloc[starts[-1]:]
    if carry is not None and len(carry):
        yield carry


def partition_sums(block_rows: Iterable[pd.DataFrame], scorers: dict[str, BlockScorer], universe: np.ndarray,
                   ks: list[int], coverage_k: int | None) -> pd.DataFrame:
    """Sum rows (model, protocol, metric, k, value, items) of user blocks, every model scored once per block:
    the sampled protocol, and full ranking with its top-``coverage_k`` items unless ``coverage_k`` is None."""
    full = coverage_k is not None
    sums = {(name, protocol): Counter() for name in scorers for protocol in ("sampled", "full")}
    covered = {name: np.zeros(len(universe), dtype=bool) for name in scorers}
    for block in block_rows:
        for name, scorer in scorers.items():
            scores = scorer(block)
            sums[(name, "sampled")].update(rank_sums(sampled_ranks(scores, universe, block), ks))
            if full:
                ranks, top = full_ranks(scores, universe, block, coverage_k)
                sums[(name, "full")].update(rank_sums(ranks, ks, len(universe)))
                covered[name][top] = True
    rows = [(name, protocol, metric, k, float(v), None)
            for (name, protocol), c in sums.items() for (metric, k), v in c.items()]
    rows += [(name, "full", "covered", coverage_k, 0.0, np.flatnonzero(c).astype(np.int32))
             for name, c in covered.items() if full]
    return pd.DataFrame(rows, columns=["model", "protocol", "metric", "k", "value", "items"])


# ------------------------------------------------------------------- Spark
def user_blocks(candidates: DataFrame, history: DataFrame | None, factors: dict[str, DataFrame],
                block: int) -> DataFrame:
    """(user_id, item_id, negatives, block[, history][, factors_<model>]) of every user with a held-out item.

    Users are numbered in id order and cut into blocks of ``block`` users;
    ``history`` holds the user's fit items, ``factors`` each factor model's
    (user_id, factors) rows (null for users the model does not know).
    """
    users = candidates.select("user_id", "item_id", "negatives")
    numbered = users.select("user_id").orderBy("user_id").zipWithIndex("position")
    out = users.join(numbered.select("user_id", F.expr(f"position div {block}").alias("block")), "user_id")
    if history is not None:
        out = out.join(history.groupBy("user_id").agg(F.collect_list("item_id").alias("history")), "user_id",
                       "left")
    for name, users_factors in factors.items():
        out = out.join(users_factors.withColumnRenamed("factors", factor_column(name)), "user_id", "left")
    return out


def evaluate_models(models: dict[str, Model], candidates: DataFrame, history: DataFrame | None,
                    universe: np.ndarray, ks: list[int], settings: EvaluateConfig) -> pd.DataFrame:
    """Metric rows (model, protocol, metric, k, value) of every model on ``candidates`` (user_id, item_id,
    negatives): the sampled protocol, and full ranking when ``history`` (the fit's user_id, item_id) is given.

    ``universe`` is the sorted item ids every model is ranked over.
    """
    spark, started = candidates.sparkSession, time.time()
    full, coverage_k = history is not None, settings.coverage_k
    factors = {name: m.users for name, m in models.items() if isinstance(m, Factors)}
    rows = user_blocks(candidates, history, factors, settings.user_block)
    partitions = settings.partitions or spark.sparkContext.defaultParallelism
    payload = spark.sparkContext.broadcast({"universe": universe,
                                            "models": {name: shipped(m) for name, m in models.items()}})
    key = uuid.uuid4().hex

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        task_threads()
        value = payload.value
        scorers = on_worker(key, lambda: {name: block_scorer(name, m, value["universe"])
                                          for name, m in value["models"].items()})
        yield partition_sums(blocks(batches), scorers, value["universe"], ks, coverage_k if full else None)

    sums = (rows.repartition(partitions, "block").sortWithinPartitions("block", "user_id")
            .mapInPandas(score, SUMS_SCHEMA).toPandas())
    payload.unpersist()
    frames = []
    for name in models:
        for protocol in ("sampled", "full") if full else ("sampled",):
            part = sums[(sums["model"] == name) & (sums["protocol"] == protocol)]
            frames.append(metric_rows(name, protocol, metric_values(part, protocol, ks, len(universe), coverage_k)))
    log.info("evaluate: %s scored on executors in %.0fs", ", ".join(models), time.time() - started)
    return pd.concat(frames, ignore_index=True)


def metric_values(sums: pd.DataFrame, protocol: str, ks: list[int], n_items: int,
                  coverage_k: int) -> dict[tuple[str, int], float]:
    """{(metric, k): value} of one model and protocol from its partitions' sum rows."""
    total = {key: math.fsum(g["value"]) for key, g in sums.groupby(["metric", "k"])}
    users = total.get(("users", 0), 0.0)

    def mean(key: tuple[str, int]) -> float:
        return total.get(key, 0.0) / users if users else 0.0

    out = {}
    for k in ks:
        out[("HR" if protocol == "sampled" else "Recall", k)] = mean(("hits", k))
        out[("NDCG", k)] = mean(("ndcg", k))
    if protocol == "full":
        out[("MRR", 0)] = mean(("rr", 0))
        covered = sums.loc[sums["metric"] == "covered", "items"]
        found = np.unique(np.concatenate([_EMPTY, *covered])) if len(covered) else _EMPTY
        out[("Coverage", coverage_k)] = len(found) / n_items if n_items else 0.0
    return out
