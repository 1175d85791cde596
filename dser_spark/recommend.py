"""Exact top-K for every user over the items they have not interacted with.

Runs as ``mapInPandas`` over partitions of users (each user's interactions
arrive whole and in time order, see ``events``); the model files are broadcast
once and loaded once per Python worker, whose torch uses as many threads as the
task has CPUs. Scoring uses the structure of the model (``Kernel``):

* the GMF part and the linear taste part are one matrix product per user
  block x item block;
* the first MLP layer is separable: its item half is computed once per worker
  and its user half once per user, and only the rest of the tower runs per
  pair, in chunks of pairs sized to stay in the CPU cache;
* a running exact top-K per user is kept across item blocks (``torch.topk``,
  ties broken by the smaller item id), never an all-pairs matrix of all users.

Users the model does not know but who have a history get Doc2Vec vectors
inferred from it (``infer_vectors``) and a neutral GMF part; users without a
usable history get the popularity list. Each row says which path made it
(``source``).
"""
from __future__ import annotations

import logging
import math
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from torch import nn

from dser_spark import tables
from dser_spark.config import Config
from dser_spark.model import DSER, window_means
from dser_spark.train import Trained, load_from_bytes

log = logging.getLogger("dser_spark")

RECS_SCHEMA = "user_id int, rank int, item_id int, score float, source string"
MODEL, INFERRED, POPULAR = "model", "inferred", "popular"
_EMPTY = np.empty(0, dtype=np.int64)
_DEFAULT_L2 = 1 << 20


@dataclass(frozen=True)
class Settings:
    """How to score: all a worker needs besides the model and the data."""

    k: int = 10
    exclude_seen: bool = True
    scoring: str = "full"        # "full" DSER, or "dot": only its dot-product parts (GMF + taste)
    user_block: int = 256
    item_block: int = 0          # 0 = as many items as fit block_memory_mb of logits
    block_memory_mb: int = 64
    tower_pairs: int = 0         # 0 = from the L2 cache size (see cache_pairs)
    partitions: int = 0          # 0 = Spark's default parallelism (one task per core)
    infer_epochs: int = 20       # Doc2Vec inference for users unknown to the model
    infer_negative: int = 5
    seed: int = 42

    @classmethod
    def from_config(cls, cfg: Config) -> "Settings":
        """Settings of a run from its configuration."""
        r = cfg.recommend
        return cls(k=r.k, exclude_seen=r.exclude_seen, scoring=r.scoring, user_block=r.user_block,
                   item_block=r.item_block, block_memory_mb=r.block_memory_mb, tower_pairs=r.tower_pairs,
                   partitions=r.partitions, infer_epochs=cfg.embed.epochs,
                   infer_negative=max(1, cfg.embed.negative), seed=cfg.seed)


@dataclass
class Popularity:
    """Interaction counts per item."""

    item_ids: np.ndarray  # sorted
    counts: np.ndarray

    def counts_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Counts aligned with ``item_ids`` (0 for items nobody interacted with)."""
        out = np.zeros(len(item_ids), dtype=np.int64)
        if len(self.item_ids):
            pos = np.clip(np.searchsorted(self.item_ids, item_ids), 0, len(self.item_ids) - 1)
            found = self.item_ids[pos] == item_ids
            out[found] = self.counts[pos[found]]
        return out


# ------------------------------------------------------------------ kernel
def _tower_layers(tower: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(W^T, b) of each Linear of a Linear-ReLU tower."""
    modules = list(tower)
    if any(not isinstance(m, nn.Linear) for m in modules[0::2]) or \
            any(not isinstance(m, nn.ReLU) for m in modules[1::2]) or len(modules) % 2:
        raise TypeError(f"the MLP tower must alternate Linear and ReLU, got {tower}")
    return [(m.weight.T.contiguous(), m.bias) for m in modules[0::2]]


def l2_cache_bytes() -> int:
    """Size of one core's L2 cache from Linux sysfs (1 MiB when unknown)."""
    units = {"K": 1 << 10, "M": 1 << 20}
    for entry in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (entry / "level").read_text().strip() == "2":
                size = (entry / "size").read_text().strip()
                return int(size.rstrip("KM")) * units.get(size[-1], 1)
        except (OSError, ValueError):
            break
    return _DEFAULT_L2


def cache_pairs(first_width: int) -> int:
    """Pairs per tower chunk: the first layer's fp32 activations (the widest) take 4 x L2.

    They are written once and streamed once, so they may spill to L3; larger
    chunks amortise the per-op overhead (measured best on a Zen 4 EPYC).
    """
    return int(np.clip(l2_cache_bytes() // first_width, 1024, 65536))


class Kernel:
    """Logits of blocks of users against a fixed set of candidate items.

    logit(u, i) = [g_u * w_gmf, t_u, 1] . [g_i, t_i, b] + w_mlp . tower(relu(h_u + h_i))

    The first term is one matrix product; only the tower runs per pair, in
    chunks of ``pairs`` pairs. ``mlp=False`` scores the dot-product parts only.
    Blocks are computed into per-thread scratch memory that is reused, so the
    large blocks never pay for fresh pages.
    """

    def __init__(self, model: DSER, items: torch.Tensor, mlp: bool = True, pairs: int = 0):
        with torch.no_grad():
            gi, hi, li = model.item_part(items)
            self.w_gmf, self.w_mlp = (w.detach() for w in model._fusion_weights())
            self.gmf = model.cfg.use_gmf
            bias = model.out.bias.detach().expand(len(items), 1)
            self.item_dot = torch.cat([gi, li, bias] if self.gmf else [li, bias], 1).T.contiguous()  # (D, N)
            self.item_hidden = hi.contiguous()                                                        # (N, h0)
            self.layers = [(w.detach(), b.detach()) for w, b in _tower_layers(model.tower)]
        self.mlp = mlp and model.cfg.use_mlp
        self.widths = [hi.shape[1]] + [w.shape[1] for w, _ in self.layers]
        self.pairs = pairs or cache_pairs(self.widths[0])
        self._scratch = threading.local()

    @property
    def n_items(self) -> int:
        return self.item_dot.shape[1]

    def flops_per_pair(self) -> int:
        """Multiply-adds x 2 (and the first-layer add) of one (user, item) logit."""
        flops = 2 * self.item_dot.shape[0]
        if self.mlp:
            flops += self.widths[0] + 2 * sum(a * b for a, b in zip(self.widths, self.widths[1:])) \
                + 2 * self.widths[-1]
        return flops

    def users(self, parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The user side of a block: (dot-product part, first-layer MLP half)."""
        gu, hu, lu = parts
        ones = lu.new_ones((lu.shape[0], 1))
        return torch.cat([gu * self.w_gmf, lu, ones] if self.gmf else [lu, ones], 1), hu.contiguous()

    def logits(self, users: tuple[torch.Tensor, torch.Tensor], start: int, stop: int) -> torch.Tensor:
        """(B, stop - start) logits of the user block against candidate items start:stop.

        The result lives in scratch memory: valid until this thread's next call.
        """
        dot, hidden = users
        out = self._scratch_tensor("logits", (dot.shape[0], stop - start))
        torch.mm(dot, self.item_dot[:, start:stop], out=out)
        if self.mlp:
            self._add_tower(out, hidden, start, stop)
        return out

    def _scratch_tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reusable per-thread float tensor of ``shape`` (grown when too small)."""
        numel = math.prod(shape)
        buf = getattr(self._scratch, name, None)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel)
            setattr(self._scratch, name, buf)
        return buf[:numel].view(shape)

    def _add_tower(self, out: torch.Tensor, hidden: torch.Tensor, start: int, stop: int) -> None:
        """out += w_mlp . tower(relu(h_u + h_i)), one cache-sized chunk of pairs at a time."""
        cols = min(stop - start, self.pairs)
        rows = max(1, self.pairs // cols)
        for r0 in range(0, hidden.shape[0], rows):
            r1 = min(r0 + rows, hidden.shape[0])
            for c0 in range(start, stop, cols):
                c1 = min(c0 + cols, stop)
                p = (r1 - r0) * (c1 - c0)
                x = self._scratch_tensor("layer0", (r1 - r0, c1 - c0, self.widths[0]))
                torch.add(hidden[r0:r1, None, :], self.item_hidden[None, c0:c1, :], out=x)
                x = x.view(p, self.widths[0]).relu_()
                for layer, (wt, b) in enumerate(self.layers, start=1):
                    x = torch.addmm(b, x, wt, out=self._scratch_tensor(f"layer{layer}", (p, wt.shape[1]))).relu_()
                y = torch.mv(x, self.w_mlp, out=self._scratch_tensor("mlp", (p,)))
                out[r0:r1, c0 - start:c1 - start] += y.view(r1 - r0, c1 - c0)


# ------------------------------------------------------------------- top-K
def block_top(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top-``k`` set of each row (values, columns); among equal values the lower column wins.

    ``topk`` of k + 1 shows whether the k-th value ties with the next one;
    only rows with such a tie at the boundary are stably sorted in full.
    """
    n = logits.shape[1]
    if n <= k:
        return torch.sort(logits, dim=1, descending=True, stable=True)
    vals, cols = torch.topk(logits, k + 1, dim=1)
    tie = (vals[:, k - 1] == vals[:, k]) & torch.isfinite(vals[:, k - 1])
    if bool(tie.any()):
        rows = tie.nonzero().squeeze(1)
        v, c = torch.sort(logits[rows], dim=1, descending=True, stable=True)
        vals[rows, :k], cols[rows, :k] = v[:, :k], c[:, :k]
    return vals[:, :k], cols[:, :k]


def merge_top(best: tuple[torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor],
              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of two candidate lists per row, ordered by value desc then column asc."""
    vals, cols = torch.cat([best[0], new[0]], 1), torch.cat([best[1], new[1]], 1)
    by_col = torch.argsort(cols, dim=1, stable=True)
    vals, cols = vals.gather(1, by_col), cols.gather(1, by_col)
    by_val = torch.argsort(vals, dim=1, descending=True, stable=True)[:, :k]
    return vals.gather(1, by_val), cols.gather(1, by_val)


def top_k(kernel: Kernel, users: tuple[torch.Tensor, torch.Tensor], seen: tuple[np.ndarray, np.ndarray],
          k: int, item_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` (logits, candidate columns) per user; ``seen`` (rows, columns sorted) are excluded."""
    n_users = users[0].shape[0]
    best = (torch.empty((n_users, 0)), torch.empty((n_users, 0), dtype=torch.long))
    rows, cols = seen
    with torch.no_grad():
        for start in range(0, kernel.n_items, item_block):
            stop = min(start + item_block, kernel.n_items)
            logits = kernel.logits(users, start, stop)
            lo, hi = np.searchsorted(cols, [start, stop])
            if hi > lo:
                logits[torch.from_numpy(rows[lo:hi]), torch.from_numpy(cols[lo:hi] - start)] = -torch.inf
            vals, found = block_top(logits, k)
            best = merge_top(best, (vals, found + start), k)
    return best


def seen_columns(cand_ids: np.ndarray, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(row, candidate column) of every history item that is a candidate, sorted by column."""
    flat = np.concatenate(histories) if histories else _EMPTY
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.searchsorted(cand_ids, flat)
    ok = cols < len(cand_ids)
    ok[ok] = cand_ids[cols[ok]] == flat[ok]
    order = np.argsort(cols[ok], kind="stable")
    return rows[ok][order], cols[ok][order]


# --------------------------------------------------------------- cold start
def vector_user_parts(model: DSER, long: torch.Tensor, recent: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``model.user_part`` for users without a row: from their Doc2Vec vectors, GMF part neutral (zero).

    ``long`` (B, d) is the paragraph vector, ``recent`` (B, W, d) the recent windows.
    """
    cfg, n = model.cfg, long.shape[0]
    if cfg.use_recency:
        taste = (recent * model.recency_weights[None, :, None]).sum(1)
        if cfg.use_long_term:
            taste = taste + model.long_term_weight * long
    else:
        taste = long.new_zeros((n, model.item_out_vectors.shape[1]))
    lin = [taste, long.new_ones((n, 1))] if cfg.item_bias else [taste]
    return long.new_zeros((n, cfg.gmf_dim)), model.mlp_user(long), torch.cat(lin, 1)


def infer_vectors(histories: list[np.ndarray], out_vectors: np.ndarray, counts: np.ndarray, epochs: int,
                  negative: int, seeds: list[list[int]], alpha: float = 0.025, min_alpha: float = 1e-4
                  ) -> np.ndarray:
    """PV-DBOW paragraph vectors of item-index sequences against frozen output vectors.

    What gensim's ``Doc2Vec.infer_vector`` does, from stored arrays only: a
    small random start, then per epoch and per item one negative-sampling
    step (negatives from counts^0.75) with a linearly decaying rate.
    """
    dim = out_vectors.shape[1]
    weights = np.asarray(counts, dtype=np.float64) ** 0.75
    probs = weights / weights.sum()
    labels = np.zeros(negative + 1, dtype=np.float32)
    labels[0] = 1.0
    rates = np.linspace(alpha, min_alpha, epochs) if epochs > 1 else np.array([alpha])
    out = np.zeros((len(histories), dim), dtype=np.float32)
    for row, (hist, seed) in enumerate(zip(histories, seeds)):
        rng = np.random.default_rng(seed)
        vec = ((rng.random(dim) - 0.5) / dim).astype(np.float32)
        negs = rng.choice(len(probs), size=(epochs, len(hist), negative), p=probs)
        for epoch, rate in enumerate(rates):
            for item, drawn in zip(hist, negs[epoch]):
                targets = out_vectors[np.concatenate(([item], drawn))]
                grad = (labels - 1.0 / (1.0 + np.exp(-(targets @ vec)))) * rate
                grad[1:][drawn == item] = 0.0
                vec += grad @ targets
        out[row] = vec
    return out


# ----------------------------------------------------------------- serving
class Serving:
    """One model ready to recommend: its kernel over the candidate items and the popularity list."""

    def __init__(self, trained: Trained, settings: Settings, popularity: Popularity,
                 candidates: np.ndarray | None = None):
        self.trained, self.settings = trained, settings
        model = trained.model
        idx = np.arange(len(trained.item_ids))
        if candidates is not None:
            idx = np.flatnonzero(np.isin(trained.item_ids, candidates))
        self.cand_ids = trained.item_ids[idx].astype(np.int64)
        self.kernel = Kernel(model, torch.from_numpy(idx), mlp=settings.scoring == "full",
                             pairs=settings.tower_pairs)
        self.item_block = settings.item_block or max(
            1, settings.block_memory_mb * (1 << 20) // (4 * settings.user_block))
        counts = popularity.counts_of(self.cand_ids)
        self.popular_order = np.lexsort((self.cand_ids, -counts))
        # the share of the model's users who interacted with the item
        self.popular_scores = np.minimum(counts / max(len(trained.user_ids), 1), 1.0).astype(np.float32)
        self.vocab = (model.item_out_vectors.abs().sum(1) > 0).numpy()  # items Doc2Vec trained
        self.item_counts = np.maximum(popularity.counts_of(trained.item_ids.astype(np.int64)), 1) * self.vocab

    @torch.no_grad()
    def recommend(self, user_ids: np.ndarray, histories: list[np.ndarray]) -> pd.DataFrame:
        """Rows (user_id, rank, item_id, score, source) for users with time-ordered item histories."""
        known_ids = self.trained.user_ids
        pos = np.clip(np.searchsorted(known_ids, user_ids), 0, len(known_ids) - 1)
        known = known_ids[pos] == user_ids
        unknown = np.flatnonzero(~known)
        usable = {r: self._model_items(histories[r]) for r in unknown}
        inferred = np.array([r for r in unknown if len(usable[r])], dtype=np.int64)
        popular = np.array([r for r in unknown if not len(usable[r])], dtype=np.int64)
        frames = [self._popular(user_ids[popular], [histories[r] for r in popular])]
        mine = np.flatnonzero(known)
        if len(mine):
            idx = torch.from_numpy(pos[mine])
            frames.append(self._scored(user_ids[mine], [histories[r] for r in mine], MODEL,
                                       lambda rows: self.trained.model.user_part(idx[rows])))
        if len(inferred):
            parts = self._inferred_parts(user_ids[inferred], [usable[r] for r in inferred])
            frames.append(self._scored(user_ids[inferred], [histories[r] for r in inferred], INFERRED,
                                       lambda rows: tuple(p[rows] for p in parts)))
        return pd.concat(frames, ignore_index=True)

    def _scored(self, user_ids: np.ndarray, histories: list[np.ndarray], source: str,
                parts: Callable[[slice], tuple[torch.Tensor, ...]]) -> pd.DataFrame:
        """Top-K rows of users scored by the kernel, ``user_block`` users at a time.

        ``parts`` maps a slice of ``user_ids`` to the model's user parts.
        """
        block, out = self.settings.user_block, []
        for start in range(0, len(user_ids), block):
            rows = slice(start, start + block)
            users = self.kernel.users(parts(rows))
            seen = seen_columns(self.cand_ids, histories[rows] if self.settings.exclude_seen else [])
            logits, cols = top_k(self.kernel, users, seen, self.settings.k, self.item_block)
            out.append(_rows(user_ids[rows], logits, self.cand_ids[cols.numpy()], source))
        return pd.concat(out, ignore_index=True)

    def _model_items(self, history: np.ndarray) -> np.ndarray:
        """Dense indexes of the history items the model's Doc2Vec knows, in time order."""
        ids = self.trained.item_ids
        pos = np.clip(np.searchsorted(ids, history), 0, len(ids) - 1)
        pos = pos[ids[pos] == history]
        return pos[self.vocab[pos]]

    def _inferred_parts(self, user_ids: np.ndarray, usable: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
        """User parts from Doc2Vec vectors inferred from the histories."""
        model, s = self.trained.model, self.settings
        long = infer_vectors(usable, model.item_out_vectors.numpy(), self.item_counts, s.infer_epochs,
                             s.infer_negative, [[s.seed, int(u) % 2 ** 63] for u in user_ids])
        depth = max(1, int(model.windows.max()))
        context = torch.full((len(usable), depth), -1, dtype=torch.long)
        for row, items in enumerate(usable):
            newest = items[::-1][:depth].copy()
            context[row, :len(newest)] = torch.from_numpy(newest)
        recent = window_means(model.item_vectors, context, model.windows)
        return vector_user_parts(model, torch.from_numpy(long), recent)

    def _popular(self, user_ids: np.ndarray, histories: list[np.ndarray]) -> pd.DataFrame:
        """The most popular candidates each user has not interacted with."""
        k, order = self.settings.k, self.popular_order
        picks = []
        for hist in histories:
            head = order[:k + (len(hist) if self.settings.exclude_seen else 0)]
            if self.settings.exclude_seen and len(hist):
                head = head[~np.isin(self.cand_ids[head], hist)]
            picks.append(head[:k])
        n = [len(p) for p in picks]
        cols = np.concatenate([_EMPTY, *picks])
        return pd.DataFrame({
            "user_id": np.repeat(user_ids, n).astype(np.int32),
            "rank": np.concatenate([_EMPTY, *(np.arange(1, m + 1) for m in n)]).astype(np.int32),
            "item_id": self.cand_ids[cols].astype(np.int32),
            "score": self.popular_scores[cols],
            "source": POPULAR,
        })


def _rows(user_ids: np.ndarray, logits: torch.Tensor, item_ids: np.ndarray, source: str) -> pd.DataFrame:
    """Flatten per-user top lists into rows with probabilities, dropping excluded (-inf) slots."""
    b, k = logits.shape
    valid = torch.isfinite(logits).numpy().ravel()
    return pd.DataFrame({
        "user_id": np.repeat(user_ids, k).astype(np.int32)[valid],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), b)[valid],
        "item_id": item_ids.ravel().astype(np.int32)[valid],
        "score": torch.sigmoid(logits).numpy().ravel().astype(np.float32)[valid],
        "source": source,
    })


# ------------------------------------------------------------------- Spark
_WORKER: dict[str, Serving] = {}


def _worker_serving(key: str, payload, settings: Settings) -> Serving:
    """The Serving of broadcast ``key``, built once per Python worker."""
    if key not in _WORKER:
        _WORKER.clear()
        value = payload.value
        _WORKER[key] = Serving(load_from_bytes(value["files"]), settings, value["popularity"],
                               value["candidates"])
    return _WORKER[key]


def popularity(interactions: DataFrame) -> Popularity:
    """Interaction counts per item (collected to the driver: one row per item)."""
    counts = interactions.groupBy("item_id").count().toPandas().sort_values("item_id")  # Arrow: no Row objects
    return Popularity(counts["item_id"].to_numpy(np.int64), counts["count"].to_numpy(np.int64))


def events(interactions: DataFrame, users: DataFrame | None, partitions: int) -> DataFrame:
    """(user_id, item_id, t) rows hash-partitioned by user and sorted by (user, time, item) in each
    partition, so every user's history arrives whole and in order.

    With ``users``, only theirs, plus one row without an item per asked user
    (so users without any interaction are still there).
    """
    rows = interactions.select("user_id", "item_id", F.unix_micros("ts").alias("t"))
    if users is not None:
        users = users.select(F.col("user_id").cast("int")).distinct()
        rows = rows.join(users, "user_id", "left_semi").unionByName(
            users.select("user_id", F.lit(None).cast("int").alias("item_id"), F.lit(None).cast("long").alias("t")))
    return rows.repartition(partitions, "user_id").sortWithinPartitions("user_id", "t", "item_id")


def group_histories(rows: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """(user ids, each one's item ids in time order) from ``events`` rows, which come sorted."""
    users = rows["user_id"].to_numpy(np.int64)
    has_item = rows["item_id"].notna().to_numpy()
    user_ids = users[np.r_[True, users[1:] != users[:-1]]] if len(users) else users
    cuts = np.searchsorted(users[has_item], user_ids[1:])
    return user_ids, np.split(rows["item_id"][has_item].to_numpy(np.int64), cuts)


def user_histories(batches: Iterator[pd.DataFrame], min_users: int
                   ) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """``group_histories`` of sorted ``events`` batches, streamed ``min_users`` or more users at a time.

    The last user of a batch may go on in the next one, so their rows wait
    for it: memory stays at a few batches whatever the partition's size.
    """
    done: list[pd.DataFrame] = []
    n_done, carry = 0, None
    for batch in batches:
        if not len(batch):
            continue
        rows = batch if carry is None else pd.concat([carry, batch], ignore_index=True)
        users = rows["user_id"].to_numpy()
        cut = int(np.searchsorted(users, users[-1]))
        done.append(rows.iloc[:cut])
        carry = rows.iloc[cut:]
        n_done += int(np.count_nonzero(np.diff(users[:cut]))) + (cut > 0)
        if n_done >= min_users:
            yield group_histories(pd.concat(done, ignore_index=True))
            done, n_done = [], 0
    if carry is not None:
        yield group_histories(pd.concat([*done, carry], ignore_index=True))


def recommend_all(spark: SparkSession, files: dict[str, bytes], interactions: DataFrame, settings: Settings,
                  users: DataFrame | None = None, items: np.ndarray | None = None) -> DataFrame:
    """recommendations(user_id, rank, item_id, score, source) for ``users`` (default: all in interactions).

    ``items`` restricts the candidate items (default: every item of the model).
    Each task streams its partition's interactions, sorted by the JVM, as
    whole user histories (no collect_list of arrays) and recommends for a few
    thousand users at a time.
    """
    partitions = settings.partitions or spark.sparkContext.defaultParallelism
    payload = spark.sparkContext.broadcast(
        {"files": files, "popularity": popularity(interactions), "candidates": items})
    key = uuid.uuid4().hex

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        torch.set_num_threads(max(1, int(ctx.cpus())) if ctx else 1)
        serving = _worker_serving(key, payload, settings)
        for user_ids, hist in user_histories(batches, 16 * settings.user_block):
            yield serving.recommend(user_ids, hist)

    return events(interactions, users, partitions).mapInPandas(score, RECS_SCHEMA)


def id_list(spark: SparkSession, cfg: Config, spec: str, ids: list[int], column: str) -> DataFrame | None:
    """The ids a ``recommend.users`` / ``recommend.items`` setting names, or None for all.

    ``ids`` (a list) wins; else ``spec`` is ``all``, a warehouse table name,
    or a path / URI of Parquet files; either must have ``column``.
    """
    if ids:
        return spark.createDataFrame([(int(i),) for i in ids], f"{column} int")
    if spec == "all":
        return None
    df = spark.read.parquet(spec) if ("/" in spec or ":" in spec) else tables.read_table(spark, cfg, spec)
    if column not in df.columns:
        raise tables.ValidationError(f"{spec}: expected a column '{column}', found {df.columns}")
    return df.select(F.col(column).cast("int").alias(column)).where(F.col(column).isNotNull()).distinct()


def candidate_items(spark: SparkSession, cfg: Config, model_items: np.ndarray) -> np.ndarray | None:
    """The ``recommend.items`` the model can score (None: all of its items)."""
    wanted = id_list(spark, cfg, cfg.recommend.items, cfg.recommend.item_ids, "item_id")
    if wanted is None:
        return None
    asked = wanted.toPandas()["item_id"].to_numpy()
    items = np.intersect1d(model_items, asked)
    if not len(items):
        raise tables.ValidationError(f"recommend.items: none of the {len(asked)} items is known to the model")
    if len(items) < len(asked):
        log.warning("recommend.items: %d of %d items are unknown to the model and left out",
                    len(asked) - len(items), len(asked))
    return items
