"""Synthetic MovieLens data in the ml-25m layout, at any scale.

``generate(out_dir, users, items, ratings, seed)`` writes into ``out_dir``:

* ``ratings.csv``  ``userId,movieId,rating,timestamp`` sorted by userId then
  movieId (as GroupLens ships it, so readers must order by time themselves);
  exactly ``ratings`` rows, no duplicate (userId, movieId) pair, userIds
  1..N, every user >= 5 ratings, ratings 0.5..5.0 in half stars (whole stars
  only before 2003-02-18, as on the real site), unix timestamps
  1995-01-09..2019-11-21, strictly increasing along each user's sequence.
* ``movies.csv``   ``movieId,title,genres``: sparse, increasing movieIds;
  titles such as ``Generated Title 123 (1997)``, some with commas
  (``"Generated Title 5, The (1994)"``, ``"Man, the Legend 9 (1994)"``),
  embedded double quotes, non-ASCII letters, an alternative title in
  parentheses before the year, and a few without a year at all, as in the real
  file; ``|``-separated genres from the 19 MovieLens genres in alphabetical
  order, a few ``(no genres listed)``.
* ``links.csv``    ``movieId,imdbId,tmdbId`` (imdbId zero-padded to 7 digits,
  a few tmdbIds empty).
* ``tags.csv``     ``userId,movieId,tag,timestamp`` (about 1% of the ratings,
  on rated pairs, some tags quoted because they hold commas or quotes).

The shape follows MovieLens: power-law item popularity (flat head, steep tail:
the top item holds ~0.3% of the ratings at ml-25m scale), log-normal user
activity clamped at 5, ml-25m's rating histogram (mean ~3.5) driven by user
and item biases, and per-user sessions inside an active span. Each user has a
favourite genre and may drift to a second one along the sequence, so recent
items say something about the next one.

Output depends only on (users, items, ratings, seed): users are generated in
fixed blocks of ``BLOCK_USERS`` with one random stream per block, so the
number of worker processes changes the speed, never the bytes.

Also: ``iter_rating_blocks(...)`` yields the ratings as pandas DataFrames
without touching disk; ``build_world(...)`` returns the movies and per-user
parameters. The command line is ``scripts/make_synthetic.py``.

Three modules, one a stage: :mod:`dser_spark.synthetic_world` (constants and
the shared world), :mod:`dser_spark.synthetic_sample` (one block of users'
ratings and tags) and this one (blocks in worker processes, the CSV files).
"""
from __future__ import annotations

import csv
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator

import numpy as np

from dser_spark.synthetic_sample import sample_block
from dser_spark.synthetic_world import (
    BLOCK_USERS, GENRES, HALF_STAR_TS, MIN_USER_RATINGS, NO_GENRES,
    RATING_LABELS, TAG_VOCAB, TS_END, TS_START, World, build_world,
    random_stream, user_rating_counts)

__all__ = ["generate", "iter_rating_blocks", "build_world", "sample_block",
           "user_rating_counts", "World", "BLOCK_USERS", "MIN_USER_RATINGS",
           "TS_START", "TS_END", "HALF_STAR_TS"]


# --------------------------------------------------------- parallel blocks
def _worker_loop(w: World, first: int, step: int, conn) -> None:
    """Worker process: blocks first, first+step, ... sent in order on conn.

    ``send`` blocks until the parent reads, so each worker runs at most one
    block ahead (bounded memory).
    """
    try:
        for b in range(first, w.n_blocks, step):
            conn.send(sample_block(w, b))
    except BaseException:                       # report, don't hang parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _start_method() -> str:
    """Fork where there is one: the workers share the world without pickling."""
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _iter_blocks(w: World, workers: int,
                 start_method: str | None = None) -> Iterator[dict]:
    """Blocks in order, computed by up to ``workers`` worker processes.

    Any start method works, as the worker is a function of this importable
    module: fork by default (nothing to pickle on the way in), spawn or
    forkserver pickle the world into each worker (and, as multiprocessing
    always does, re-import the caller's main module, which must then be a
    file with an ``if __name__ == "__main__"`` guard). Results come back in
    block order, so the bytes never depend on the worker count or start method.
    """
    n = w.n_blocks
    workers = min(workers, n)
    if workers <= 1:
        for b in range(n):
            yield sample_block(w, b)
        return
    ctx = mp.get_context(start_method or _start_method())
    conns, procs = [], []
    try:
        for i in range(workers):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_loop, args=(w, i, workers, send),
                               daemon=True)
            proc.start()
            send.close()
            conns.append(recv)
            procs.append(proc)
        for b in range(n):
            try:
                msg = conns[b % workers].recv()
            except EOFError:
                raise RuntimeError(f"generator worker died on block {b}")
            if isinstance(msg, tuple):
                raise RuntimeError(f"generator worker failed on block {b}:\n"
                                   f"{msg[1]}")
            yield msg
    finally:
        for c in conns:
            c.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


def _default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def iter_rating_blocks(users: int, items: int, ratings: int, seed: int = 0,
                       workers: int = 1):
    """Yield the ratings as pandas DataFrames (userId, movieId, rating,
    timestamp), one per block of users, without writing files."""
    import pandas as pd
    w = build_world(users, items, ratings, seed)
    values = np.array([(i + 1) / 2 for i in range(10)], np.float64)
    for blk in _iter_blocks(w, workers):
        yield pd.DataFrame({"userId": blk["userId"],
                            "movieId": blk["movieId"],
                            "rating": values[blk["level"]],
                            "timestamp": blk["timestamp"]})


# ------------------------------------------------------------------ writing
# Title styles (format, share of movies): mostly plain, then the real file's
# awkward cases: commas, double quotes, non-ASCII, alternative title, no year.
TITLE_STYLES = (
    ("Generated Title {mid} ({year})", 0.847),
    ("Generated Title {mid}, The ({year})", 0.08),
    ("Man, the Legend {mid} ({year})", 0.03),
    ('"Generated" Title {mid} ({year})', 0.01),
    ("Généré Título {mid} ({year})", 0.01),
    ("Generated Title {mid} (Titre Alternatif {mid}) ({year})", 0.02),
    ("Generated Title {mid}", 0.003),
)


def _write_small_files(w: World, out: Path, rng: np.random.Generator) -> None:
    M = w.n_items
    formats = [f for f, _ in TITLE_STYLES]
    styles = rng.choice(len(formats), M, p=[p for _, p in TITLE_STYLES])
    with open(out / "movies.csv.tmp", "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["movieId", "title", "genres"])
        for mid, year, st, gm in zip(w.movie_ids.tolist(), w.years.tolist(),
                                     styles.tolist(), w.genre_mask.tolist()):
            genres = ("|".join(g for b, g in enumerate(GENRES) if gm >> b & 1)
                      or NO_GENRES)
            wr.writerow([mid, formats[st].format(mid=mid, year=year),
                         genres])

    imdb = np.cumsum(rng.integers(1, max(2, 2 * 9_000_000 // M), M)) + 10_000
    tmdb = np.cumsum(rng.integers(1, 20, M)) + 1
    tmdb_missing = rng.random(M) < 0.002
    with open(out / "links.csv.tmp", "w", newline="", encoding="utf-8") as f:
        f.write("movieId,imdbId,tmdbId\n")
        f.writelines(
            f"{mid},{im:07d},{'' if miss else tm}\n"
            for mid, im, tm, miss in zip(w.movie_ids.tolist(), imdb.tolist(),
                                         tmdb.tolist(), tmdb_missing.tolist()))


def generate(out_dir, users: int, items: int, ratings: int, seed: int = 0, *,
             workers: int | None = None, progress: bool = True) -> dict:
    """Write ratings.csv, movies.csv, links.csv and tags.csv into out_dir.

    Returns counts, paths and elapsed seconds. Files appear under their final
    names only when complete (written as ``*.tmp`` then renamed).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = build_world(users, items, ratings, seed)
    if workers is None:
        workers = _default_workers()
    _write_small_files(w, out, random_stream(seed, 2))

    labels = pa.array(RATING_LABELS)
    schema = pa.schema([("userId", pa.int32()), ("movieId", pa.int32()),
                        ("rating", pa.string()), ("timestamp", pa.int64())])
    opts = pacsv.WriteOptions(include_header=False, quoting_style="none")
    rated = np.zeros(items, bool)
    n_rows = n_tags = 0
    every = max(1, w.n_blocks // 20)
    with open(out / "ratings.csv.tmp", "wb") as rf, \
            open(out / "tags.csv.tmp", "w", newline="",
                 encoding="utf-8") as tf:
        rf.write(b"userId,movieId,rating,timestamp\n")
        tw = csv.writer(tf, lineterminator="\n")
        tw.writerow(["userId", "movieId", "tag", "timestamp"])
        writer = pacsv.CSVWriter(rf, schema, write_options=opts)
        for b, blk in enumerate(_iter_blocks(w, workers)):
            table = pa.Table.from_arrays(
                [pa.array(blk["userId"]), pa.array(blk["movieId"]),
                 labels.take(pa.array(blk["level"])),
                 pa.array(blk["timestamp"])], schema=schema)
            writer.write_table(table)
            rated[blk["item"]] = True
            n_rows += blk["userId"].size
            tw.writerows(zip(blk["tag_userId"].tolist(),
                             blk["tag_movieId"].tolist(),
                             [TAG_VOCAB[i] for i in blk["tag_word"].tolist()],
                             blk["tag_timestamp"].tolist()))
            n_tags += blk["tag_userId"].size
            if progress and ((b + 1) % every == 0 or b + 1 == w.n_blocks):
                print(f"make_synthetic: block {b + 1}/{w.n_blocks} "
                      f"{n_rows:,} ratings "
                      f"{time.perf_counter() - t_start:.1f}s",
                      file=sys.stderr, flush=True)
        writer.close()
    if n_rows != ratings:
        raise AssertionError(f"wrote {n_rows} ratings, expected {ratings}")
    paths = {}
    for name in ("ratings", "movies", "links", "tags"):
        final = out / f"{name}.csv"
        os.replace(out / f"{name}.csv.tmp", final)
        paths[name] = str(final)
    return {"users": users, "movies": items, "ratings": n_rows,
            "rated_movies": int(rated.sum()), "tags": n_tags,
            "seconds": time.perf_counter() - t_start, "paths": paths,
            "bytes": sum(os.path.getsize(p) for p in paths.values())}
