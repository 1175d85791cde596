"""Ratings and tags for one block of users of the synthetic data.

The second stage of :mod:`dser_spark.synthetic`: :func:`sample_block` takes
the shared :class:`~dser_spark.synthetic_world.World` and a block number and
draws, from that block's own random stream, which items each user rates (in
sequence order), when, how many stars and which tags. Blocks are independent,
so they can be drawn in any process and in any order.
"""
from __future__ import annotations

import numpy as np

from dser_spark.synthetic_world import (AFFINITY, BLOCK_USERS, HALF_STAR_PROBS,
                                        HALF_STAR_TS, NOISE_SD, TAG_VOCAB,
                                        TS_END, TS_START, WHOLE_STAR_PROBS,
                                        World, random_stream)


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
    rng = random_stream(w.seed, 1, block)
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
