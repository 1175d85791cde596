"""The synthetic data's world: constants, catalogue and per-user parameters.

The first stage of :mod:`dser_spark.synthetic` (see there for what the data
looks like). :func:`build_world` draws, from one random stream, everything
that all blocks of users share: the movies (ids, years, genres, popularity,
item biases) and each user's rating count, favourite and drift genres, bias,
join date, session habits and whether they tag. The ratings themselves are
drawn per block in :mod:`dser_spark.synthetic_sample`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
def random_stream(seed: int, *key: int) -> np.random.Generator:
    """The random stream ``key`` of ``seed``: (0,) the world, (1, b) block b,
    (2,) the movie titles and links."""
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
    rng = random_stream(seed, 0)
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
