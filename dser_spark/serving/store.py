"""In-memory snapshots of a published warehouse, replaced in the background when a night is published.

A snapshot holds everything a page or an endpoint reads, loaded once with
DuckDB and laid out for lookups that never scan a table:

* each published night of ``recommendations`` (only the files its manifest
  ``_published.json`` names: a version directory being written is never read),
  rows sorted by (user, rank), with the start offset of every user;
* ``interactions`` sorted by (user, newest first), with the same offsets, so a
  user's recent ratings are one binary search and a slice;
* ``items`` as a dict, ``metrics`` as a small frame, and the manifest and
  architecture of every model behind a published night.

Ids are the source's own, in its type: the MovieLens tables carry them
already; your own data's warehouse (``data.format: table | parquet | csv``)
keeps dense ids in ``interactions`` and ``items``, which the load joins to
``user_ids`` / ``item_ids`` so that every key is the source's id (an integer,
or a string such as a UUID or a SKU).

``Store.current()`` returns the snapshot in force; at most every
``reload_seconds`` it checks the manifest's identity (inode, mtime, size:
``partitioned.publish`` replaces it in one step) and, when it changed, loads
the new snapshot in a background thread while requests keep reading the old
one, then swaps it in whole. A load that fails (a night's old version removed
by retention mid-read, ``interactions`` being swapped by ``prepare``) is
retried; if it keeps failing the old snapshot stays in force and the error is
reported. Every file path comes from the warehouse root given at start and the
manifests in it, never from a request.
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from dser_spark.partitioned import MANIFEST, published_files
from dser_spark.serving.diagram import Architecture, architecture

log = logging.getLogger("dser_spark")

RECOMMENDATIONS = "recommendations"
INT64 = (-(2 ** 63), 2 ** 63 - 1)  # the ids a lookup accepts


def local_root(root: str) -> Path:
    """The warehouse root as a local path (a path or a ``file:`` URI); other schemes are refused."""
    if root.startswith("file:"):
        return Path("/" + root.removeprefix("file:").lstrip("/")).absolute()
    if "://" in root:
        raise ValueError(f"warehouse.root={root}: the dashboard and the API read a local warehouse "
                         f"(a path or a file:// URI)")
    return Path(root).absolute()


Key = int | str  # a source id: an integer, or a string (UUID, SKU, ...)


def id_array(values: np.ndarray) -> np.ndarray:
    """Ids as int64, or as a fixed-width string array for string ids (sorted as DuckDB sorts: by code point)."""
    values = np.asarray(values)
    return values.astype(np.int64) if values.dtype.kind in "iu" else values.astype(str)


@dataclass(frozen=True)
class Offsets:
    """Rows grouped by a sorted key: rows ``starts[i]:starts[i + 1]`` belong to ``keys[i]``."""

    keys: np.ndarray    # int64 or str, sorted, unique
    starts: np.ndarray  # int64, len(keys) + 1

    @classmethod
    def of_sorted(cls, column: np.ndarray) -> Offsets:
        """Offsets of a column already sorted by key (one pass, no sort)."""
        column = id_array(column)
        starts = np.concatenate([[0], np.flatnonzero(column[1:] != column[:-1]) + 1, [len(column)]])
        keys = column[starts[:-1]]
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
            raise ValueError("ids are not sorted the way lookups search them")
        return cls(keys, starts.astype(np.int64))

    @property
    def strings(self) -> bool:
        """Whether the keys are strings (else integers)."""
        return self.keys.dtype.kind == "U"

    @property
    def total(self) -> int:
        """Rows of every key."""
        return int(self.starts[-1])

    def rows(self, key: Key) -> slice | None:
        """The rows of ``key`` (None when the key is absent)."""
        if isinstance(key, str) != self.strings or (not self.strings and not INT64[0] <= key <= INT64[1]):
            return None
        i = int(np.searchsorted(self.keys, key))
        if i < len(self.keys) and self.keys[i] == key:
            return slice(int(self.starts[i]), int(self.starts[i + 1]))
        return None


@dataclass(frozen=True)
class Night:
    """One published ``dt`` of ``recommendations``, sorted by (user, rank)."""

    dt: str
    users: Offsets
    rank: np.ndarray
    item_id: np.ndarray            # int64 or str, as the source has them
    score: np.ndarray
    source: np.ndarray             # codes into ``sources``
    sources: tuple[str, ...]
    model_ids: tuple[str, ...]     # distinct model_run_id (one per night in practice)
    k: int                         # the highest rank published


@dataclass(frozen=True)
class History:
    """Every interaction, sorted by user then newest first (``ts`` in epoch milliseconds)."""

    users: Offsets
    item_id: np.ndarray     # int64 or str
    rating: np.ndarray
    ts: np.ndarray


@dataclass(frozen=True)
class ModelInfo:
    """A model behind a published night: its manifest, directory and architecture."""

    model_id: str
    manifest: dict
    directory: Path
    architecture: Architecture | None


@dataclass(frozen=True)
class Snapshot:
    """Everything the dashboard and the API read, as of one version of the manifest."""

    root: Path
    nights: dict[str, Night] = field(default_factory=dict)      # by dt, oldest first
    history: History | None = None
    items: dict[Key, dict] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    version: tuple | None = None
    loaded_at: str = ""
    problem: str | None = None     # why there is nothing to serve

    @property
    def dts(self) -> list[str]:
        return list(self.nights)

    @property
    def latest(self) -> str | None:
        return self.dts[-1] if self.nights else None

    @property
    def string_users(self) -> bool:
        """Whether user ids are strings (else integers)."""
        return bool(self.nights) and self.nights[self.latest].users.strings

    @property
    def string_items(self) -> bool:
        """Whether item ids are strings (else integers)."""
        return bool(self.nights) and self.nights[self.latest].item_id.dtype.kind == "U"


def manifest_version(root: Path) -> tuple | None:
    """Identity of the recommendations manifest (None when there is none)."""
    try:
        st = os.stat(root / RECOMMENDATIONS / MANIFEST)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("*.parquet"))


def _query(con: duckdb.DuckDBPyConnection, sql: str, files: list[str]) -> duckdb.DuckDBPyConnection:
    """``sql`` with ``{files}`` standing for the Parquet files, which are bound as a parameter."""
    return con.execute(sql.format(files="read_parquet($files, hive_partitioning = false)"), {"files": files})


def _load_night(con: duckdb.DuckDBPyConnection, dt: str, files: list[str]) -> Night:
    """One night, sorted by (user, rank); ``source`` as codes (no Python string per row)."""
    sources = tuple(r[0] for r in _query(con, "SELECT DISTINCT source FROM {files} ORDER BY 1", files).fetchall())
    models = tuple(r[0] for r in _query(con, "SELECT DISTINCT model_run_id FROM {files} ORDER BY 1", files).fetchall())
    got = con.execute("SELECT user_id, rank, item_id, score, list_position($sources, source) - 1 AS source FROM "
                      "read_parquet($files, hive_partitioning = false) ORDER BY user_id, rank",
                      {"files": files, "sources": list(sources)}).fetchnumpy()
    return Night(dt=dt, users=Offsets.of_sorted(got["user_id"]), rank=np.asarray(got["rank"], np.int32),
                 item_id=id_array(got["item_id"]), score=np.asarray(got["score"], np.float64),
                 source=np.asarray(got["source"], np.int8), sources=sources, model_ids=models,
                 k=int(got["rank"].max()) if len(got["rank"]) else 0)


def _parquet(name: str) -> str:
    return f"read_parquet(${name}, hive_partitioning = false)"


def _source_ids(root: Path) -> dict[str, list[str]] | None:
    """Your own data's id maps (``user_ids`` / ``item_ids`` files); None for a MovieLens warehouse."""
    if not (root / "user_ids").is_dir():
        return None
    maps = {name: _files(root / name) for name in ("user_ids", "item_ids")}
    for name, files in maps.items():
        if not files:
            raise FileNotFoundError(f"{root / name}: no Parquet files (the id map of your own data)")
    return maps


def _load_history(con: duckdb.DuckDBPyConnection, files: list[str], maps: dict[str, list[str]] | None) -> History:
    """Every interaction by the source's ids, sorted by user then newest first."""
    if maps is None:
        sql = f"SELECT user_id, item_id, rating, epoch_ms(ts) AS ts FROM {_parquet('h')}"
    else:
        sql = (f"SELECT u.source_id AS user_id, i.source_id AS item_id, h.rating, epoch_ms(h.ts) AS ts "
               f"FROM {_parquet('h')} h JOIN {_parquet('user_ids')} u ON h.user_id = u.user_id "
               f"JOIN {_parquet('item_ids')} i ON h.item_id = i.item_id")
    got = con.execute(f"SELECT * FROM ({sql}) ORDER BY user_id, ts DESC NULLS LAST, item_id",
                      {"h": files, **(maps or {})}).fetchnumpy()
    users = Offsets.of_sorted(got.pop("user_id"))
    return History(users, id_array(got["item_id"]), np.ma.filled(got["rating"], np.nan), np.ma.filled(got["ts"], 0))


def _load_items(con: duckdb.DuckDBPyConnection, files: list[str], maps: dict[str, list[str]] | None) -> dict[Key, dict]:
    """Every item's columns by the source's item id (your own data's ``raw_id`` is that id, so it is left out)."""
    if maps is None:
        cursor = con.execute(f"SELECT * FROM {_parquet('i')}", {"i": files})
    else:
        cursor = con.execute(f"SELECT m.source_id AS item_id, i.* EXCLUDE (item_id, raw_id) FROM {_parquet('i')} i "
                             f"JOIN {_parquet('item_ids')} m ON i.item_id = m.item_id",
                             {"i": files, "item_ids": maps["item_ids"]})
    names = [d[0] for d in cursor.description]
    key = names.index("item_id")
    return {row[key]: dict(zip(names, row)) for row in cursor.fetchall()}


def _load_models(root: Path, ids: set[str]) -> dict[str, ModelInfo]:
    out = {}
    for mid in sorted(ids):
        directory = root / "models" / mid
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except (OSError, ValueError):
            continue  # a model id without a readable manifest: shown without its details
        out[mid] = ModelInfo(mid, manifest, directory, architecture(directory, manifest))
    return out


def load(root: Path) -> Snapshot:
    """Read a snapshot of the warehouse at ``root`` (raises on a read failure; see ``Store``)."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if not root.is_dir():
        return Snapshot(root, loaded_at=now, problem=f"no warehouse at {root}: check warehouse.root "
                                                     f"(--config / --set warehouse.root=...)")
    version = manifest_version(root)
    published = published_files(root / RECOMMENDATIONS)
    if not published:
        return Snapshot(root, version=version, loaded_at=now,
                        problem=f"nothing published yet under {root}: run `dser-spark nightly` (or "
                                f"`dser-spark recommend`) first")
    maps = _source_ids(root)
    con = duckdb.connect()
    try:
        nights = {dt: _load_night(con, dt, files) for dt, files in sorted(published.items())}
        history_files, item_files = _files(root / "interactions"), _files(root / "items")
        metric_files = _files(root / "metrics")
        history = _load_history(con, history_files, maps) if history_files else None
        items = _load_items(con, item_files, maps) if item_files else {}
        metrics = (_query(con, "SELECT * FROM {files}", metric_files).df()
                   if metric_files else pd.DataFrame())
    finally:
        con.close()
    models = _load_models(root, {m for n in nights.values() for m in n.model_ids})
    return Snapshot(root, nights, history, items, metrics, models, version, now)


class Store:
    """The snapshot in force for one warehouse root, reloaded when a new night is published."""

    def __init__(self, root: Path, reload_seconds: float = 2.0, retries: int = 3, retry_wait: float = 0.5):
        self.root, self.reload_seconds = root, reload_seconds
        self._retries, self._retry_wait = retries, retry_wait
        self._lock = threading.Lock()
        self._loading: threading.Thread | None = None
        self._failed: tuple | None = None
        self.error: str | None = None  # the last reload failure, while the previous snapshot stays in force
        self._snapshot = self._load_or_report()
        self._checked = time.monotonic()

    def current(self) -> Snapshot:
        """The snapshot in force; starts a background reload when the manifest changed."""
        now = time.monotonic()
        if now - self._checked >= self.reload_seconds:
            with self._lock:
                self._checked = now
                version = manifest_version(self.root)
                stale = version != self._snapshot.version and version != self._failed
                if stale and self._loading is None:
                    self._loading = threading.Thread(target=self._reload, name="dser-serving-reload", daemon=True)
                    self._loading.start()
        return self._snapshot

    def wait(self, timeout: float = 60.0) -> Snapshot:
        """The snapshot in force once a reload in progress has finished."""
        loading = self._loading
        if loading is not None:
            loading.join(timeout)
        return self._snapshot

    def _reload(self) -> None:
        try:
            self._snapshot = self._load_or_report()
        finally:
            self._loading = None

    def _load_or_report(self) -> Snapshot:
        """A fresh snapshot; after ``retries`` failed reads the previous one, with the error noted."""
        for attempt in range(1, self._retries + 1):
            version = manifest_version(self.root)
            try:
                started = time.perf_counter()
                snapshot = load(self.root)
            except Exception as exc:  # noqa: BLE001 - whatever a torn read raises, the old snapshot keeps serving
                log.warning("serving: loading %s failed (attempt %d/%d): %s", self.root, attempt, self._retries, exc)
                error = f"{type(exc).__name__}: {exc}"
                time.sleep(self._retry_wait)
                continue
            log.info("serving: loaded %s (nights %s) in %.1fs", self.root, ", ".join(snapshot.dts) or "none",
                     time.perf_counter() - started)
            gc.freeze()  # the snapshot's objects (items) stay out of every later collection: no long GC pauses
            self.error, self._failed = None, None
            return snapshot
        self._failed = version
        previous = getattr(self, "_snapshot", None)
        if previous is None:
            return Snapshot(self.root, version=version, problem=f"cannot read the warehouse at {self.root}: {error}")
        self.error = f"reload failed, serving the previous snapshot: {error}"
        return previous
