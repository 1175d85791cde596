"""A synthetic bookshop with string ids, to test the bring-your-own-data path end to end.

``generate_books(out_dir, users, books, events, seed)`` writes two Parquet directories of two part files each:

* ``events/``  ``customer_id`` (UUID-like), ``sku`` (``BK-00417-X``), ``stars`` (float32 1..5, if ``with_rating``),
  ``event_time`` (``ts_unit``: int64 epoch ``ms`` or ``s``, or UTC ``timestamp[us]``), rows shuffled. Each
  customer reads >= 5 distinct books; ~5% of the rows repeat an earlier pair of theirs later on (stars may differ
  by one); times in 2015..2024 strictly increase along each customer's sequence.
* ``books/``   ``sku``, ``title``, ``author``, ``subjects`` (1-3 of :data:`SUBJECTS`), ``description`` (uses the
  subjects' words). ~3% of the books read have no row; ~1% of the books are never read (more when sparse).

Signal: each customer takes ~85% of their draws from a favourite subject, by power-law popularity; half drift to
a second subject over the second half of their sequence; stars favour the customer's subjects. Output depends
only on the arguments, and ``ts_unit`` / ``with_rating`` change no other column.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dser_spark.synthetic_world import user_rating_counts

SUBJECTS = {  # subject -> the words its descriptions use
    "fantasy": "dragons, magic and lost kingdoms", "science fiction": "starships, robots and distant worlds",
    "mystery": "detectives, clues and a locked room", "romance": "love, letters and second chances",
    "history": "empires, wars and forgotten archives", "biography": "a remarkable life and its turning points",
    "cooking": "recipes, kitchens and seasonal food", "travel": "journeys, maps and faraway cities",
    "poetry": "verses, rhythm and quiet images", "philosophy": "ethics, reason and the meaning of life",
    "science": "experiments, discoveries and the laws of nature", "business": "markets, strategy and leadership",
    "gardening": "soil, seeds and flowering borders", "art": "painters, colour and museums",
    "children": "friendship, animals and bedtime adventures"}
NAMES = tuple(SUBJECTS)
SUBJECT_WEIGHTS = np.array([9, 7, 8, 8, 7, 5, 5, 4, 2, 3, 5, 4, 2, 3, 6.0])
ADJ = ("Silent", "Golden", "Hidden", "Last", "Broken", "Winter", "Burning", "Quiet", "Lost", "Crimson", "Wild")
NOUN = ("Harbour", "Garden", "Kingdom", "Letter", "River", "Kitchen", "Map", "Orchard", "Lantern", "Voyage", "Tide")
FIRST = ("Ada", "Ben", "Clara", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi", "Liam", "Mara")
LAST = ("Abbott", "Brennan", "Castillo", "Doyle", "Eriksen", "Fontaine", "Garcia", "Haddad", "Ivanova", "Okafor")
TONE = ("gripping", "gentle", "sweeping", "witty", "haunting", "practical")
STAR_PROBS = np.array([0.04, 0.08, 0.20, 0.33, 0.35])
T_START, T_END = 1420070400, 1735689599  # 2015-01-01 .. 2024-12-31 23:59:59 UTC
REPEAT, NO_META, UNREAD, FAV_SHARE = 0.05, 0.03, 0.01, 0.85
TS_TYPES = {"ms": pa.int64(), "s": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC")}


def _pairs(k: np.ndarray, fav: np.ndarray, drift: np.ndarray, cdf: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k[u] distinct books per user u, as (owner, book) sorted by owner and in sequence order: draws with
    replacement keep the first new hits; users still short after a few rounds are topped up uniformly."""
    U, R = k.size, cdf.shape[1]
    have, seen, owners, items = np.zeros(U, np.int64), np.empty(0, np.int64), [], []
    todo = np.arange(U)
    for rnd in range(6):
        n = np.ceil((k[todo] - have[todo]) * (1.3 + rnd)).astype(np.int64) + 4
        o = np.repeat(todo, n)
        pos = have[o] + np.arange(o.size) - np.repeat(np.cumsum(n) - n, n)
        late = rng.random(o.size) < np.clip(2.0 * pos / k[o] - 1.0, 0.0, 1.0)  # drift in the second half
        subj, r, it = np.where(late, drift[o], fav[o]), rng.random(o.size), np.empty(o.size, np.int64)
        for c in np.unique(subj):  # inverse cdf per subject
            it[subj == c] = np.searchsorted(cdf[c], r[subj == c], side="right")
        it = np.minimum(it, R - 1)
        uk, first = np.unique(o * R + it, return_index=True)
        first = np.sort(first[~np.isin(uk, seen, assume_unique=True)])
        ok = np.arange(first.size) - np.searchsorted(o[first], o[first]) < (k - have)[o[first]]
        owners.append(o[first[ok]])
        items.append(it[first[ok]])
        seen = np.union1d(seen, owners[-1] * R + items[-1])
        have += np.bincount(owners[-1], minlength=U)
        todo = np.flatnonzero(have < k)
        if not todo.size:
            break
    for u in todo:
        lo, hi = np.searchsorted(seen, [u * R, (u + 1) * R])
        owners.append(np.full(k[u] - have[u], u))
        items.append(rng.permutation(np.setdiff1d(np.arange(R), seen[lo:hi] - u * R))[: k[u] - have[u]])
    owner, item = np.concatenate(owners), np.concatenate(items)
    order = np.argsort(owner, kind="stable")
    return owner[order], item[order]


def _times(owner: np.ndarray, U: int, rng: np.random.Generator) -> np.ndarray:
    """Strictly increasing epoch seconds along each user's rows (owner sorted): sessions, fitted into 2015..2024."""
    n = np.bincount(owner, minlength=U)
    start = np.cumsum(n) - n
    brk_mean = 86400.0 * 10.0 ** rng.uniform(0.0, 2.0, U)
    gap = np.where(rng.random(owner.size) < 0.2, rng.exponential(1.0, owner.size) * brk_mean[owner],
                   rng.exponential(1200.0, owner.size))
    gap[start] = 0.0
    t0 = (T_START + rng.random(U) * 0.9 * (T_END - T_START)).astype(np.int64)
    scale = np.minimum(1.0, (T_END - t0 - n) / np.maximum(np.add.reduceat(gap, start), 1.0))
    g = np.floor(gap * scale[owner]).astype(np.int64) + 1
    g[start] = 0
    cs = np.cumsum(g)
    return t0[owner] + cs - cs[start][owner]


def _customer_ids(users: int, rng: np.random.Generator) -> pa.Array:
    """Random 8-4-4-4-12 hex strings (no order relation to creation)."""
    hx = rng.bytes(16 * users).hex()
    return pa.array([f"{hx[i:i + 8]}-{hx[i + 8:i + 12]}-{hx[i + 12:i + 16]}-{hx[i + 16:i + 20]}-{hx[i + 20:i + 32]}"
                     for i in range(0, 32 * users, 32)])


def _skus(books: int) -> pa.Array:
    """``BK-<zero-padded number>-<check letter>`` (weighted digit sum mod 26)."""
    width = max(5, len(str(books)))
    num = np.arange(1, books + 1)
    check = (num[:, None] // 10 ** np.arange(width - 1, -1, -1) % 10 * np.arange(1, width + 1)).sum(axis=1) % 26
    return pa.array([f"BK-{n:0{width}d}-{chr(65 + c)}" for n, c in zip(num.tolist(), check.tolist())])


def _book_table(skus: pa.Array, top: np.ndarray, n_sub: np.ndarray, rows: np.ndarray,
                rng: np.random.Generator) -> pa.Table:
    """Title, author, subjects and description of the books ``rows``."""
    a, n1, n2, style, tone = (rng.integers(m, size=len(skus))
                              for m in (len(ADJ), len(NOUN), len(NOUN), 3, len(TONE)))
    auth = rng.integers(max(5, len(skus) // 4), size=len(skus))
    title, author, subjects, desc = [], [], [], []
    for i in rows.tolist():
        title.append((f"The {ADJ[a[i]]} {NOUN[n1[i]]}", f"{ADJ[a[i]]} {NOUN[n1[i]]}",
                      f"The {NOUN[n1[i]]} and the {NOUN[n2[i]]}")[style[i]])
        x, f = divmod(int(auth[i]), len(FIRST))
        author.append(f"{FIRST[f]} {chr(65 + x // len(LAST) % 26)}. {LAST[x % len(LAST)]}")
        subjects.append([NAMES[s] for s in top[i, : n_sub[i]]])
        desc.append(f"A {TONE[tone[i]]} {' and '.join(subjects[-1])} book about "
                    f"{'; '.join(SUBJECTS[s] for s in subjects[-1])}.")
    return pa.table({"sku": skus.take(pa.array(rows)), "title": title, "author": author,
                     "subjects": pa.array(subjects, pa.list_(pa.string())), "description": desc})


def _write(table: pa.Table, d: Path) -> None:
    """``d/part-0.parquet`` and ``d/part-1.parquet`` (other ``*.parquet`` in d removed)."""
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.parquet"):
        old.unlink()
    half = (table.num_rows + 1) // 2
    pq.write_table(table.slice(0, half), d / "part-0.parquet")
    pq.write_table(table.slice(half), d / "part-1.parquet")


def generate_books(out_dir, users: int, books: int, events: int, seed: int = 0, *,
                   ts_unit: str = "ms", with_rating: bool = True) -> dict:
    """Write ``events/`` and ``books/`` into out_dir; return counts (``book_rows``: rows of ``books/``,
    ``unread_books``: books in no event). Raises ValueError for impossible sizes."""
    if ts_unit not in TS_TYPES:
        raise ValueError(f"ts_unit={ts_unit!r}: one of {', '.join(TS_TYPES)}")
    if users < 1 or books < 5:
        raise ValueError(f"need users >= 1 and books >= 5 (got users={users}, books={books})")
    if events < 5 * users:
        raise ValueError(f"events={events} < 5 x users={users}: every customer reads >= 5 distinct books")
    readable = books - min(int(round(UNREAD * books)), books - 5)
    repeats = min(int(round(REPEAT * events)), events - 5 * users)
    distinct = events - repeats
    if distinct > users * readable:
        raise ValueError(f"events={events} need {distinct} distinct (customer, book) pairs > users x readable "
                         f"books = {users} x {readable}")
    rng = np.random.default_rng(seed)
    S = len(NAMES)

    # Catalogue: 1-3 subjects (primary first), power-law popularity, per-subject mixtures.
    n_sub = rng.choice([1, 2, 3], books, p=[0.5, 0.35, 0.15])
    top = np.argsort(-(np.log(SUBJECT_WEIGHTS) + rng.gumbel(size=(books, S))), axis=1)[:, :3]
    has = np.zeros((books, S), bool)
    np.put_along_axis(has, top, np.arange(3) < n_sub[:, None], axis=1)
    pop = (1.0 + rng.permutation(books) / max(1.0, 0.01 * books)) ** -1.2
    quality = rng.normal(0.0, 0.5, books)
    read_ok = np.sort(rng.choice(books, readable, replace=False))
    p_all = pop[read_ok] / pop[read_ok].sum()
    p_sub = pop[read_ok, None] * has[read_ok]
    tot = p_sub.sum(axis=0)
    p_sub = np.where(tot > 0, p_sub / np.maximum(tot, 1e-300), p_all[:, None])
    cdf = np.cumsum(FAV_SHARE * p_sub.T + (1 - FAV_SHARE) * p_all, axis=1)
    cdf /= cdf[:, -1:]

    # Customers: distinct reads in sequence order, stars, then repeats later in the sequence.
    k = user_rating_counts(users, readable, distinct, rng)
    fav = rng.choice(S, users, p=SUBJECT_WEIGHTS / SUBJECT_WEIGHTS.sum())
    drift = np.where(rng.random(users) < 0.5, fav, rng.choice(S, users))
    owner, book = _pairs(k, fav, drift, cdf, rng)
    book = read_ok[book]
    seq = np.arange(distinct) - (np.cumsum(k) - k)[owner]
    z = (rng.normal(0.0, 0.5, users)[owner] + quality[book] + rng.normal(0.0, 0.7, distinct)
         + 0.8 * (has[book, fav[owner]] | has[book, drift[owner]]))
    stars = np.searchsorted(np.quantile(z, np.cumsum(STAR_PROBS)[:-1]), z) + 1
    src = rng.choice(distinct, repeats, replace=False)
    pair = np.concatenate([np.arange(distinct), src])
    star = np.clip(stars[pair] + np.r_[np.zeros(distinct, np.int64), rng.integers(-1, 2, repeats)], 1, 5)
    after = seq[src] + (k[owner[src]] - seq[src]) * (1.0 - rng.random(repeats))  # in (seq, k]
    order = np.lexsort((np.r_[seq, after], owner[pair]))
    pair, star = pair[order], star[order]
    sec = _times(owner[pair], users, rng)
    ms = sec * 1000 + rng.integers(0, 1000, events)
    ts = {"ms": ms, "s": sec, "timestamp": ms * 1000}[ts_unit]

    skus = _skus(books)
    idx = rng.permutation(events)
    cols = {"customer_id": _customer_ids(users, rng).take(pa.array(owner[pair[idx]])),
            "sku": skus.take(pa.array(book[pair[idx]]))}
    if with_rating:
        cols["stars"] = pa.array(star[idx].astype(np.float32))
    cols["event_time"] = pa.array(ts[idx], TS_TYPES[ts_unit])
    read = np.unique(book)
    no_meta = rng.choice(read, int(round(NO_META * read.size)), replace=False)
    rows = np.setdiff1d(np.arange(books), no_meta)
    out = Path(out_dir)
    _write(pa.table(cols), out / "events")
    _write(_book_table(skus, top, n_sub, rows, rng), out / "books")
    return {"users": users, "books": books, "events": events, "distinct_pairs": distinct, "repeats": repeats,
            "books_without_metadata": int(no_meta.size), "book_rows": int(rows.size),
            "unread_books": int(books - read.size), "out": str(out)}
