#!/usr/bin/env python3
"""Synthetic MovieLens data in the ml-25m layout, at any scale.

    python scripts/make_synthetic.py --users 162000 --items 62000 \\
        --ratings 25000000 --out /tmp/synth25m [--seed 0] [--workers 2]

writes into ``--out``:

* ``ratings.csv``  ``userId,movieId,rating,timestamp`` sorted by userId then
  movieId (as GroupLens ships it, so readers must order by time themselves);
  exactly ``--ratings`` rows, no duplicate (userId, movieId) pair, userIds
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

Importable: ``generate(out_dir, users, items, ratings, seed)`` writes the
files; ``iter_rating_blocks(...)`` yields the ratings as pandas DataFrames
without touching disk; ``build_world(...)`` returns the movies and per-user
parameters.
"""

import argparse
import csv
import math
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

MIN_USER_RATINGS = 5
BLOCK_USERS = 4096           # users per random stream / write batch (fixed)
TS_START = 789652009         # 1995-01-09 11:46:49 UTC, first ml-25m rating
TS_END = 1574327703          # 2019-11-21 09:15:03 UTC, last ml-25m rating
HALF_STAR_TS = 1045526400    # 2003-02-18: half stars appear on MovieLens

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX",
          "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western")
# Approximate number of ml-25m movies per genre (relative weights only).
GENRE_WEIGHTS = np.array([7348, 4145, 2929, 2935, 16870, 5319, 5605, 25606,
                          2731, 353, 5989, 195, 1054, 2925, 7719, 3595, 8654,
                          1874, 1399], dtype=np.float64)
NO_GENRES = "(no genres listed)"
NO_GENRES_FRACTION = 0.02

# ml-25m rating histogram for 0.5, 1.0, ..., 5.0 (mean 3.53) and ml-1m's for
# the whole stars 1..5 used before half stars existed.
HALF_STAR_PROBS = np.array([393068, 776815, 399490, 1640868, 1262797, 4896928,
                            3177318, 6639798, 2200539, 3612474], np.float64)
WHOLE_STAR_PROBS = np.array([56174, 107557, 261197, 348971, 226310],
                            np.float64)
RATING_LABELS = tuple(f"{(i + 1) / 2:.1f}" for i in range(10))

TAG_VOCAB = (
    "atmospheric", "sci-fi", "funny", "twist ending", "based on a book",
    "dark comedy", "visually appealing", "thought-provoking", "classic",
    "quirky", "surreal", "dystopia", "time travel", "space", "superhero",
    "violence", "romance", "animation", "Pixar", "Disney", "zombies",
    "World War II", "heist", "noir", "psychology", "philosophy",
    "great soundtrack", "boring", "overrated", "underrated", "predictable",
    "nonlinear", "In Netflix queue", "BD-R", "Criterion", "cult film",
    "dark, gritty", "slow, but worth it", "Oscar (Best Picture)",
    '"so bad it\'s good"', "cliché", "Amélie-esque", "stylized", "mafia",
    "high school", "remake", "social commentary", "Tom Hanks", "anime",
    "coming of age")

# Latent rating model: z = user bias + item bias + AFFINITY*[favourite genre]
# + noise, cut at its quantiles for the target histogram (per block).
USER_BIAS_SD = 0.45
ITEM_BIAS_SD = 0.30
ITEM_POP_BIAS = 0.25
AFFINITY = 0.35
NOISE_SD = 0.75
GENRE_BOOST = 4.0            # favourite-genre items are (1 + boost)x likelier


@dataclass
class World:
    """Everything shared by all user blocks (items and per-user parameters)."""

    n_users: int
    n_items: int
    n_ratings: int
    seed: int
    movie_ids: np.ndarray        # int32 [M], increasing, sparse
    years: np.ndarray            # int32 [M]
    genre_mask: np.ndarray       # int32 [M], bit g = GENRES[g]; 0 = none
    item_bias: np.ndarray        # float64 [M]
    log_p: np.ndarray            # float64 [K, M] per-cluster log probabilities
    cdf: np.ndarray              # float64 [K, M] per-cluster cdf, last = 1
    draw_k: np.ndarray           # distinct-count grid ...
    draw_n: np.ndarray           # ... and draws needed to reach it (log n)
    heavy_draws: float           # above this many draws use Gumbel top-k
    counts: np.ndarray           # int64 [N] ratings per user
    offsets: np.ndarray          # int64 [N+1] first row of each user
    fav: np.ndarray              # int8 [N] favourite genre (cluster)
    drift: np.ndarray            # int8 [N] genre the user drifts to
    user_bias: np.ndarray        # float32 [N]
    t_join: np.ndarray           # int64 [N]
    break_prob: np.ndarray       # float64 [N] chance a gap is a new session
    break_mean: np.ndarray       # float64 [N] mean seconds between sessions
    tagger: np.ndarray           # bool [N]

    @property
    def n_blocks(self) -> int:
        return (self.n_users + BLOCK_USERS - 1) // BLOCK_USERS


# --------------------------------------------------------------------- setup
def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(
        np.random.SeedSequence(seed, spawn_key=key)))


def user_rating_counts(n_users: int, n_items: int, n_ratings: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Long-tailed (log-normal) ratings per user, each >= 5, summing to R.

    A user never rates more than ``cap`` items (half the catalogue unless the
    average demands more); the excess is water-filled onto the others.
    """
    if n_users < 1 or n_items < MIN_USER_RATINGS:
        raise ValueError(f"need users >= 1 and items >= {MIN_USER_RATINGS}")
    if n_ratings < MIN_USER_RATINGS * n_users:
        raise ValueError(f"ratings={n_ratings} < {MIN_USER_RATINGS} x "
                         f"users={n_users}: every user needs "
                         f"{MIN_USER_RATINGS} ratings")
    if n_ratings > n_users * n_items:
        raise ValueError(f"ratings={n_ratings} > users x items="
                         f"{n_users * n_items}: pairs must be distinct")
    cap = min(n_items, max(n_items // 2, math.ceil(2 * n_ratings / n_users)))
    if cap * n_users < n_ratings:
        cap = n_items
    weights = rng.lognormal(0.0, 1.25, n_users)
    counts = np.full(n_users, MIN_USER_RATINGS, np.int64)
    room = np.full(n_users, cap - MIN_USER_RATINGS, np.int64)
    remaining = n_ratings - MIN_USER_RATINGS * n_users
    while remaining > 0:
        active = room > 0
        w = np.where(active, weights, 0.0)
        share = remaining * (w / w.sum())
        add = np.minimum(np.floor(share).astype(np.int64), room)
        if add.sum() == 0 or add.sum() > remaining:
            idx = np.flatnonzero(active)
            idx = idx[np.argsort(-share[idx], kind="stable")][:remaining]
            add = np.zeros(n_users, np.int64)
            add[idx] = 1
        counts += add
        room -= add
        remaining -= int(add.sum())
    return counts


def _movies(n_items: int, rng: np.random.Generator):
    # Sparse increasing ids: dense-ish at the start like the 1990s catalogue.
    gaps = rng.geometric(0.3, n_items).astype(np.int64)
    gaps[: max(1, n_items // 20)] = 1
    movie_ids = np.cumsum(gaps)
    if movie_ids[-1] >= 2**31:
        raise ValueError("too many items for int32 movieIds")
    years = np.clip(np.rint(2019.5 - rng.exponential(17.0, n_items)),
                    1902, 2019).astype(np.int32)
    # Genres: 1-5 per movie, drawn by frequency without replacement.
    n_gen = rng.choice(np.arange(1, 6), n_items,
                       p=[0.40, 0.30, 0.18, 0.08, 0.04])
    keys = np.log(GENRE_WEIGHTS)[None, :] + rng.gumbel(size=(n_items, 19))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    chosen = rank < n_gen[:, None]
    bits = (1 << np.arange(19))[None, :]
    mask = (chosen * bits).sum(axis=1).astype(np.int32)
    mask[rng.random(n_items) < NO_GENRES_FRACTION] = 0
    return movie_ids.astype(np.int32), years, mask


def _popularity(n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Base item probabilities: flat head, power-law tail, random order.

    p(rank r) ~ (1 + r/s)^-2 with s = 0.5% of the catalogue (>= 1): at
    ml-25m scale the top item holds ~0.3% and the top 10% ~90% of ratings.
    Older (lower-id) movies are mildly more popular, as in MovieLens.
    """
    s = max(1.0, 0.005 * n_items)
    w_by_rank = (1.0 + np.arange(n_items) / s) ** -2.0
    age = np.arange(n_items) / n_items
    order = np.argsort(rng.random(n_items) + 0.5 * age)
    w = np.empty(n_items)
    w[order] = w_by_rank
    return w / w.sum()


def _distinct_table(p: np.ndarray, n_items: int):
    """Draws (with replacement) needed to see k distinct items, worst cluster.

    E[distinct after n draws] = sum_j 1 - (1 - p_j)^n; returns a grid of
    distinct counts (min over clusters) and the log of n.
    """
    n_grid = np.geomspace(1.0, 64.0 * n_items, 48)
    lq = np.log1p(-np.minimum(p, 1 - 1e-12))            # [K, M]
    dist = np.empty((p.shape[0], n_grid.size))
    for c in range(p.shape[0]):
        dist[c] = -np.expm1(n_grid[:, None] * lq[c][None, :]).sum(axis=1)
    worst = dist.min(axis=0)
    return np.maximum.accumulate(worst), np.log(n_grid)


def build_world(users: int, items: int, ratings: int, seed: int = 0) -> World:
    """Draw the catalogue and every user's parameters (not the ratings)."""
    rng = _stream(seed, 0)
    counts = user_rating_counts(users, items, ratings, rng)
    movie_ids, years, mask = _movies(items, rng)
    base = _popularity(items, rng)

    has = ((mask[None, :] >> np.arange(19)[:, None]) & 1).astype(np.float64)
    p = base[None, :] * (1.0 + GENRE_BOOST * has)         # [K, M]
    p /= p.sum(axis=1, keepdims=True)
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    draw_k, draw_n = _distinct_table(p, items)

    logpop = np.log(base)
    item_bias = (ITEM_POP_BIAS * (logpop - logpop.mean()) / logpop.std()
                 + rng.normal(0.0, ITEM_BIAS_SD, items))

    gp = GENRE_WEIGHTS / GENRE_WEIGHTS.sum()
    fav = rng.choice(19, users, p=gp).astype(np.int8)
    other = rng.choice(19, users, p=gp).astype(np.int8)
    drift = np.where(rng.random(users) < 0.5, fav, other).astype(np.int8)
    # Heavy raters are harsher, as in MovieLens.
    lc = np.log(counts)
    user_bias = (rng.normal(0.0, USER_BIAS_SD, users)
                 - 0.1 * (lc - lc.mean()) / max(lc.std(), 1e-9))

    # Join date: waves around 2000 and after 2015, like ml-25m.
    year_w = np.array([0.5, 6, 4, 3, 4, 6, 3, 2, 2.5, 2.5, 3, 2.5, 2, 2, 2,
                       2, 2, 2, 2, 2, 3, 6, 7, 6, 5.5])
    year = rng.choice(25, users, p=year_w / year_w.sum())
    year_start = (np.datetime64("1995-01-01", "s").astype(np.int64)
                  + (year * 365.25 * 86400).astype(np.int64))
    t_join = np.clip(year_start + rng.integers(0, 365 * 86400, users),
                     TS_START, TS_END).astype(np.int64)
    single = rng.random(users) < 0.45
    break_prob = np.where(single, 0.0, 10.0 ** rng.uniform(-2.3, -0.7, users))
    break_mean = 86400.0 * 10.0 ** rng.uniform(-0.5, 2.3, users)
    tagger = rng.random(users) < 0.06

    offsets = np.zeros(users + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return World(users, items, ratings, seed, movie_ids, years, mask,
                 item_bias, np.log(p), cdf, draw_k, draw_n,
                 items / 3.0, counts, offsets, fav, drift,
                 user_bias.astype(np.float32), t_join, break_prob,
                 break_mean, tagger)


# ------------------------------------------------------------------ sampling
def _draw_items(cdf: np.ndarray, cl: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-cdf draws, grouped by cluster so each search stays in cache."""
    order = np.argsort(cl, kind="stable")
    bounds = np.searchsorted(cl[order], np.arange(cdf.shape[0] + 1))
    item = np.empty(cl.size, np.int64)
    for c in range(cdf.shape[0]):
        idx = order[bounds[c]:bounds[c + 1]]
        if idx.size:
            item[idx] = np.searchsorted(cdf[c], u[idx], side="right")
    return np.minimum(item, cdf.shape[1] - 1)


def _sample_light(w: World, k, c1, c2, n_draw, n_est, rng):
    """Successive sampling without replacement, vectorised over users.

    Draw n_draw[u] items with replacement (cluster c1 early in the sequence,
    c2 more often later), keep each user's first k[u] distinct items in draw
    order: that is exactly sampling without replacement proportional to the
    weights. Returns (owner, item, rank) for satisfied users, sorted by
    (owner, item), and a mask of users that saw fewer than k distinct items.
    """
    L, M = k.size, w.n_items
    total = int(n_draw.sum())
    owner = np.repeat(np.arange(L, dtype=np.int64), n_draw)
    start = np.cumsum(n_draw) - n_draw
    pos = np.arange(total, dtype=np.int64) - start[owner]
    frac = np.minimum(1.0, (pos + 0.5) / n_est[owner])
    late = rng.random(total) < frac
    cl = np.where(late, c2[owner], c1[owner]).astype(np.int8)
    item = _draw_items(w.cdf, cl, rng.random(total))
    del cl, late, pos, frac
    key = owner * M + item
    uk, first = np.unique(key, return_index=True)       # stable: first hit
    del key, owner, item
    uowner = uk // M
    n_distinct = np.bincount(uowner, minlength=L)
    ustart = np.cumsum(n_distinct) - n_distinct
    order = np.argsort(first, kind="stable")
    rank = np.empty(uk.size, np.int64)
    rank[order] = np.arange(uk.size) - ustart[uowner[order]]
    short = n_distinct < k
    keep = (rank < k[uowner]) & ~short[uowner]
    return uowner[keep], uk[keep] % M, rank[keep], short


def _sample_heavy(w: World, k: int, c1: int, c2: int, rng):
    """Gumbel top-k over the whole catalogue for users rating a large share."""
    lw = np.logaddexp(w.log_p[c1], w.log_p[c2])
    keys = lw + rng.gumbel(size=w.n_items)
    top = np.argpartition(-keys, k - 1)[:k]
    top = top[np.argsort(-keys[top], kind="stable")]
    return top.astype(np.int64), np.arange(k, dtype=np.int64)


def _timestamps(w: World, users: np.ndarray, k: np.ndarray, rng):
    """Strictly increasing unix times for each user's sequence positions."""
    L = k.size
    total = int(k.sum())
    owner = np.repeat(np.arange(L, dtype=np.int64), k)
    start = np.cumsum(k) - k
    gap = np.floor(rng.exponential(20.0, total))          # within a session
    brk = rng.random(total) < w.break_prob[users][owner]
    gap = np.where(brk, np.floor(rng.exponential(1.0, total)
                                 * w.break_mean[users][owner]), gap)
    gap[start] = 0.0
    span = np.add.reduceat(gap, start)
    room = float(TS_END - TS_START) - k
    scale = np.minimum(1.0, room / np.maximum(span, 1.0))
    g = np.floor(gap * scale[owner]).astype(np.int64) + 1
    g[start] = 0
    cs = np.cumsum(g)
    cum = cs - cs[start][owner]
    length = cum[start + k - 1]
    t0 = np.clip(w.t_join[users], TS_START, TS_END - length)
    return t0[owner] + cum, start


def _cut(z: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Levels 0..len(probs)-1 at the z-quantiles of the target histogram."""
    if z.size == 0:
        return np.zeros(0, np.int64)
    thr = np.quantile(z, np.cumsum(probs / probs.sum())[:-1])
    return np.searchsorted(thr, z)


def _discretise(z: np.ndarray, half_stars: np.ndarray) -> np.ndarray:
    """Half-star level 0..9 (rating = (level+1)/2) per row.

    The latent score is cut at its own quantiles within the block, so each
    block matches ml-25m's histogram after 2003-02-18 and ml-1m's whole-star
    histogram before it, whatever the size of the data.
    """
    level = np.empty(z.size, np.int8)
    level[half_stars] = _cut(z[half_stars], HALF_STAR_PROBS)
    level[~half_stars] = 2 * _cut(z[~half_stars], WHOLE_STAR_PROBS) + 1
    return level


def sample_block(w: World, block: int) -> dict:
    """Ratings (and tags) for users block*BLOCK_USERS ... as numpy arrays.

    Rows are sorted by (userId, movieId); ``seq`` is the 0-based position of
    each row in its user's time order.
    """
    rng = _stream(w.seed, 1, block)
    lo = block * BLOCK_USERS
    hi = min(w.n_users, lo + BLOCK_USERS)
    users = np.arange(lo, hi)
    k = w.counts[lo:hi]
    c1 = w.fav[lo:hi].astype(np.int64)
    c2 = w.drift[lo:hi].astype(np.int64)
    M = w.n_items

    n_est = np.exp(np.interp(k, w.draw_k, w.draw_n))
    n_draw = np.ceil(n_est * 1.1 + 8).astype(np.int64)
    heavy = (n_draw > w.heavy_draws) | (k > w.draw_k[-1])
    parts = []
    todo = np.flatnonzero(~heavy)
    while todo.size:
        o, it, rk, short = _sample_light(w, k[todo], c1[todo], c2[todo],
                                         n_draw[todo], n_est[todo], rng)
        parts.append((todo[o], it, rk))
        todo = todo[short]
        n_draw[todo] *= 2
        over = n_draw[todo] > w.heavy_draws
        heavy[todo[over]] = True
        todo = todo[~over]
    for u in np.flatnonzero(heavy):
        it, rk = _sample_heavy(w, int(k[u]), int(c1[u]), int(c2[u]), rng)
        parts.append((np.full(k[u], u, np.int64), it, rk))
    owner = np.concatenate([p[0] for p in parts])
    item = np.concatenate([p[1] for p in parts])
    seq = np.concatenate([p[2] for p in parts])
    if len(parts) > 1:
        order = np.argsort(owner * M + item)
        owner, item, seq = owner[order], item[order], seq[order]
    assert owner.size == int(k.sum())

    ts_seq, start = _timestamps(w, users, k, rng)
    ts = ts_seq[start[owner] + seq]

    gm = w.genre_mask[item]
    aff = ((gm >> c1[owner]) & 1) | ((gm >> c2[owner]) & 1)
    z = (w.user_bias[lo:hi][owner] + w.item_bias[item] + AFFINITY * aff
         + rng.normal(0.0, NOISE_SD, owner.size))
    level = _discretise(z, ts >= HALF_STAR_TS)

    tag_rows = np.flatnonzero(w.tagger[lo:hi][owner]
                              & (rng.random(owner.size) < 0.15))
    tw = 1.0 / np.arange(1, len(TAG_VOCAB) + 1) ** 0.8
    tag_word = rng.choice(len(TAG_VOCAB), tag_rows.size, p=tw / tw.sum())
    tag_ts = ts[tag_rows] + rng.integers(0, 3600, tag_rows.size)
    user_id = (owner + lo + 1).astype(np.int32)
    movie_id = w.movie_ids[item]
    return {
        "userId": user_id, "movieId": movie_id, "level": level,
        "timestamp": ts, "item": item.astype(np.int32),
        "tag_userId": user_id[tag_rows], "tag_movieId": movie_id[tag_rows],
        "tag_word": tag_word.astype(np.int16), "tag_timestamp": tag_ts,
    }


# --------------------------------------------------------- parallel blocks
def _worker_loop(w: World, first: int, step: int, conn) -> None:
    """Forked worker: blocks first, first+step, ... sent in order on conn.

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


def _iter_blocks(w: World, workers: int) -> Iterator[dict]:
    """Blocks in order, computed by up to ``workers`` forked processes.

    Fork (not spawn) so nothing needs pickling on the way in and the module
    works when loaded from a path by importlib; results come back in block
    order, so the bytes never depend on the worker count.
    """
    n = w.n_blocks
    workers = min(workers, n)
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        for b in range(n):
            yield sample_block(w, b)
        return
    ctx = mp.get_context("fork")
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
def _title(mid: int, year: int, style: int) -> str:
    if style == 1:
        return f"Generated Title {mid}, The ({year})"
    if style == 2:
        return f"Man, the Legend {mid} ({year})"
    if style == 3:
        return f'"Generated" Title {mid} ({year})'
    if style == 4:
        return f"Généré Título {mid} ({year})"
    if style == 5:
        return f"Generated Title {mid} (Titre Alternatif {mid}) ({year})"
    if style == 6:
        return f"Generated Title {mid}"
    return f"Generated Title {mid} ({year})"


def _write_small_files(w: World, out: Path, rng: np.random.Generator) -> None:
    M = w.n_items
    styles = rng.choice(7, M, p=[0.847, 0.08, 0.03, 0.01, 0.01, 0.02, 0.003])
    with open(out / "movies.csv.tmp", "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["movieId", "title", "genres"])
        for mid, year, st, gm in zip(w.movie_ids.tolist(), w.years.tolist(),
                                     styles.tolist(), w.genre_mask.tolist()):
            genres = ("|".join(g for b, g in enumerate(GENRES) if gm >> b & 1)
                      or NO_GENRES)
            wr.writerow([mid, _title(mid, year, st), genres])

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
    _write_small_files(w, out, _stream(seed, 2))

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Write synthetic MovieLens ml-25m-layout CSVs.")
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--ratings", type=int, required=True)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None,
                    help="generator processes (default min(2, cpus)); "
                         "does not change the output")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    try:
        r = generate(a.out, a.users, a.items, a.ratings, a.seed,
                     workers=a.workers, progress=not a.quiet)
    except ValueError as e:
        ap.error(str(e))
    print(f"make_synthetic: users={r['users']} movies={r['movies']} "
          f"ratings={r['ratings']} rated_movies={r['rated_movies']} "
          f"tags={r['tags']} bytes={r['bytes']} seconds={r['seconds']:.1f} "
          f"out={a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
