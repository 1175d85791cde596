"""Exact top-K for every user over the items they have not interacted with.

Runs as ``mapInPandas`` over partitions of users (each user's interactions
arrive whole and in time order, see ``events``); the model files are broadcast
once and loaded once per Python worker, whose torch uses as many threads as the
task has CPUs. The scores and the blocked top-K come from ``scoring``.

Users the model does not know but who have a history get Doc2Vec vectors
inferred from it (``coldstart``); users without a usable history get the
popularity list. Each row says which path made it (``source``).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dser_spark import faults, tables
from dser_spark.artifacts import Trained, load_from_bytes, stored_config
from dser_spark.coldstart import inferred_user_parts
from dser_spark.config import OWN_FORMATS, Config, RecommendConfig
from dser_spark.ids import known_each, lookup
from dser_spark.model import newest_first
from dser_spark.scoring import Kernel, on_worker, seen_columns, task_threads, top_k

log = logging.getLogger("dser_spark")

RECS_SCHEMA = "user_id int, rank int, item_id int, score float, source string"
MODEL, INFERRED, POPULAR = "model", "inferred", "popular"
_EMPTY = np.empty(0, dtype=np.int64)


@dataclass
class Popularity:
    """Interaction counts per item."""

    item_ids: np.ndarray  # sorted
    counts: np.ndarray
    lowest_rating: float = -np.inf  # of any interaction (-inf: not known)

    def counts_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Counts aligned with ``item_ids`` (0 for items nobody interacted with)."""
        pos, found = lookup(self.item_ids, item_ids)
        out = np.zeros(len(item_ids), dtype=np.int64)
        out[found] = self.counts[pos[found]]
        return out


# ----------------------------------------------------------------- serving
class Serving:
    """One model ready to recommend: its kernel over the candidate items and the popularity list."""

    def __init__(self, trained: Trained, settings: RecommendConfig, popularity: Popularity,
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
        self.min_rating = trained.config.implicit.min_rating
        self.vocab = (model.item_out_vectors.abs().sum(1) > 0).numpy()  # items Doc2Vec trained
        self.item_counts = np.maximum(popularity.counts_of(trained.item_ids.astype(np.int64)), 1) * self.vocab

    @torch.no_grad()
    def recommend(self, user_ids: np.ndarray, histories: list[np.ndarray],
                  ratings: list[np.ndarray] | None = None) -> pd.DataFrame:
        """Rows (user_id, rank, item_id, score, source) for users with time-ordered item histories.

        Every item of a history is excluded (``exclude_seen``); the positives
        among them (``ratings`` at or above the model's ``implicit.min_rating``;
        all of them without ``ratings``) make each user's state tonight.
        """
        positives = histories if ratings is None else [
            h[r >= self.min_rating] for h, r in zip(histories, ratings)]
        pos, known = lookup(self.trained.user_ids, user_ids)
        unknown = np.flatnonzero(~known)
        usable = {r: self._model_items(positives[r]) for r in unknown}
        inferred = np.array([r for r in unknown if len(usable[r])], dtype=np.int64)
        popular = np.array([r for r in unknown if not len(usable[r])], dtype=np.int64)
        frames = [self._popular(user_ids[popular], [histories[r] for r in popular])]
        mine = np.flatnonzero(known)
        if len(mine):
            idx, mine_pos = pos[mine], [positives[r] for r in mine]
            frames.append(self._scored(user_ids[mine], [histories[r] for r in mine], MODEL,
                                       lambda rows: self.known_user_parts(idx[rows], mine_pos[rows])))
        if len(inferred):
            t = self.trained
            parts = inferred_user_parts(t.model, [usable[r] for r in inferred], self.item_counts, t.config.embed,
                                        t.config.seed, user_ids[inferred])
            frames.append(self._scored(user_ids[inferred], [histories[r] for r in inferred], INFERRED,
                                       lambda rows: tuple(p[rows] for p in parts)))
        return pd.concat(frames, ignore_index=True)

    def known_user_parts(self, idx: np.ndarray, positives: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
        """User parts of the model's users ``idx``: their trained vectors, and the short-term state (the
        recent windows) computed from tonight's positives, not the ones stored at training time."""
        model = self.trained.model
        items = known_each(self.trained.item_ids, positives)
        users = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return model.user_part(users, model.recent(newest_first(items, model.context_length), users))

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
        pos, found = lookup(self.trained.item_ids, history)
        pos = pos[found]
        return pos[self.vocab[pos]]

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
def _worker_serving(key: str, payload, settings: RecommendConfig) -> Serving:
    """The Serving of broadcast ``key``, built once per Python worker."""

    def build() -> Serving:
        value = payload.value
        return Serving(load_from_bytes(value["files"]), settings, value["popularity"], value["candidates"])

    return on_worker(key, build)


def popularity(interactions: DataFrame) -> Popularity:
    """Interaction counts per item, and the lowest rating when the rows have one (collected to the driver:
    one row per item)."""
    rated = "rating" in interactions.columns
    aggregates = [F.count("*").alias("count"), *([F.min("rating").alias("lowest")] if rated else [])]
    counts = interactions.groupBy("item_id").agg(*aggregates).toPandas().sort_values("item_id")  # Arrow: no Rows
    lowest = float(counts["lowest"].min()) if rated and len(counts) else -np.inf
    return Popularity(counts["item_id"].to_numpy(np.int64), counts["count"].to_numpy(np.int64), lowest)


def events(interactions: DataFrame, users: DataFrame | None, partitions: int, ratings: bool = True) -> DataFrame:
    """(user_id, item_id[, rating]) rows hash-partitioned by user and sorted by (user, time, item) in each
    partition, so every user's history arrives whole and in order. The time only sorts, and the rating is
    left out when not needed: what does not cross to Python costs no Arrow conversion.

    With ``users``, only theirs, plus one row without an item per asked user
    (so users without any interaction are still there).
    """
    rows = interactions.select("user_id", "item_id", "rating", F.unix_micros("ts").alias("t"))
    if users is not None:
        users = users.select(F.col("user_id").cast("int")).distinct()
        rows = rows.join(users, "user_id", "left_semi").unionByName(
            users.select("user_id", F.lit(None).cast("int").alias("item_id"), F.lit(None).cast("float").alias("rating"),
                         F.lit(None).cast("long").alias("t")))
    rows = rows.repartition(partitions, "user_id").sortWithinPartitions("user_id", "t", "item_id")
    return rows.select("user_id", "item_id", *(["rating"] if ratings else []))


class Histories(NamedTuple):
    """Users and their interactions in time order (parallel lists)."""

    user_ids: np.ndarray
    items: list[np.ndarray]
    ratings: list[np.ndarray] | None  # None: every interaction is a positive


def group_histories(rows: pd.DataFrame) -> Histories:
    """Each user's items and ratings (if given) in time order, from ``events`` rows (which come sorted)."""
    users = rows["user_id"].to_numpy(np.int64)
    has_item = rows["item_id"].notna().to_numpy()
    user_ids = users[np.r_[True, users[1:] != users[:-1]]] if len(users) else users
    cuts = np.searchsorted(users[has_item], user_ids[1:])
    ratings = np.split(rows["rating"][has_item].to_numpy(np.float32), cuts) if "rating" in rows else None
    return Histories(user_ids, np.split(rows["item_id"][has_item].to_numpy(np.int64), cuts), ratings)


def user_histories(batches: Iterator[pd.DataFrame], min_users: int) -> Iterator[Histories]:
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


def recommend_all(spark: SparkSession, files: dict[str, bytes], interactions: DataFrame, settings: RecommendConfig,
                  users: DataFrame | None = None, items: np.ndarray | None = None) -> DataFrame:
    """recommendations(user_id, rank, item_id, score, source) for ``users`` (default: all in interactions).

    ``items`` restricts the candidate items (default: every item of the model).
    Each task streams its partition's interactions, sorted by the JVM, as
    whole user histories (no collect_list of arrays) and recommends for a few
    thousand users at a time.
    """
    partitions = settings.partitions or spark.sparkContext.defaultParallelism
    counts = popularity(interactions)
    every_one_positive = counts.lowest_rating >= stored_config(files).implicit.min_rating
    payload = spark.sparkContext.broadcast({"files": files, "popularity": counts, "candidates": items})
    key = uuid.uuid4().hex

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        task_threads()
        serving = _worker_serving(key, payload, settings)
        for hist in user_histories(batches, 16 * settings.user_block):
            scored = serving.recommend(*hist)
            faults.maybe_fail("recommend")  # a test hook: fails once, after real work, when asked to
            yield scored

    return events(interactions, users, partitions, ratings=not every_one_positive).mapInPandas(score, RECS_SCHEMA)


def id_list(spark: SparkSession, cfg: Config, spec: str, ids: list[int | str], column: str) -> DataFrame | None:
    """The ids a ``recommend.users`` / ``recommend.items`` setting names, or None for all.

    ``ids`` (a list) wins; else ``spec`` is ``all``, a warehouse table name,
    or a path / URI of Parquet files; either must have ``column``. Your own
    data's ids are the source's, turned into the dense ids (``to_dense``).
    """
    own = cfg.data.format in OWN_FORMATS
    if ids:
        df = spark.createDataFrame([(str(i) if own else int(i),) for i in ids], f"{column} {'string' if own else 'int'}")
    elif spec == "all":
        return None
    else:
        df = spark.read.parquet(spec) if ("/" in spec or ":" in spec) else tables.read_table(spark, cfg, spec)
        if column not in df.columns:
            raise tables.ValidationError(f"{spec}: expected a column '{column}', found {df.columns}")
    if own:
        return to_dense(spark, cfg, df, column)
    return df.select(F.col(column).cast("int").alias(column)).where(F.col(column).isNotNull()).distinct()


def to_dense(spark: SparkSession, cfg: Config, wanted: DataFrame, column: str) -> DataFrame:
    """Your own ids (``column`` in any type) -> the dense ids of ``user_ids`` / ``item_ids``; ids that prepare
    never saw cannot be scored and are left out, with a warning naming some (an error when none is known)."""
    key = F.col(column).cast("string").alias("source_id")
    asked = wanted.select(key).where(F.col("source_id").isNotNull()).distinct()
    ids = tables.read_table(spark, cfg, f"{column}s").select(column, F.col("source_id").cast("string"))
    found = asked.join(ids, "source_id", "left")
    unknown = found.where(F.col(column).isNull())
    missing, total = unknown.count(), found.count()
    if missing:
        some = ", ".join(repr(r["source_id"]) for r in unknown.orderBy("source_id").limit(5).collect())
        what = f"recommend.{column.removesuffix('_id')}s"
        if missing == total:
            raise tables.ValidationError(f"{what}: none of the {total} ids is in {column}s (e.g. {some})")
        log.warning("%s: %d of %d ids are not in %ss (never in the source) and are left out, e.g. %s",
                    what, missing, total, column, some)
    return found.where(F.col(column).isNotNull()).select(column)


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
