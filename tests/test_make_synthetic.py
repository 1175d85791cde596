"""dser_spark.synthetic and scripts/make_synthetic.py: shape, validity and
determinism (small)."""
import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dser_spark import synthetic as ms

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic.py"
USERS, ITEMS, RATINGS = 200, 100, 5000
FILES = ("ratings.csv", "movies.csv", "links.csv", "tags.csv")
GENRES = {"Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX",
          "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western"}


def _digest(d: Path) -> dict:
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in FILES}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    info = ms.generate(out, USERS, ITEMS, RATINGS, seed=7, progress=False)
    ratings = pd.read_csv(out / "ratings.csv")
    return out, info, ratings


def test_files_and_headers(small):
    out, info, _ = small
    heads = {f: (out / f).read_text(encoding="utf-8").split("\n", 1)[0]
             for f in FILES}
    assert heads == {"ratings.csv": "userId,movieId,rating,timestamp",
                     "movies.csv": "movieId,title,genres",
                     "links.csv": "movieId,imdbId,tmdbId",
                     "tags.csv": "userId,movieId,tag,timestamp"}
    assert not list(out.glob("*.tmp"))
    assert info["ratings"] == RATINGS and info["users"] == USERS


def test_ratings_rows_users_and_pairs(small):
    _, _, r = small
    assert len(r) == RATINGS
    assert list(r.columns) == ["userId", "movieId", "rating", "timestamp"]
    assert not r.duplicated(["userId", "movieId"]).any()
    per_user = r.groupby("userId").size()
    assert sorted(per_user.index) == list(range(1, USERS + 1))
    assert per_user.min() >= 5
    assert per_user.max() > 2 * per_user.median()       # long-tailed activity
    # GroupLens order: by userId, then movieId.
    assert (r.sort_values(["userId", "movieId"]).index == r.index).all()


def test_rating_values_and_distribution(small):
    out, _, r = small
    assert set(r["rating"].unique()) <= {i / 2 for i in range(1, 11)}
    assert 3.3 <= r["rating"].mean() <= 3.8
    assert r["rating"].value_counts().idxmax() in (3.0, 4.0)
    # Written as MovieLens does: one decimal, e.g. 4.0 and 3.5.
    first = (out / "ratings.csv").read_text().split("\n")[1].split(",")
    assert len(first[2].split(".")[1]) == 1
    # Whole stars only before half stars existed (2003-02-18).
    early = r[r["timestamp"] < ms.HALF_STAR_TS]
    assert (early["rating"] % 1 == 0).all()


def test_timestamps(small):
    _, _, r = small
    assert r["timestamp"].min() >= ms.TS_START
    assert r["timestamp"].max() <= ms.TS_END
    lo = pd.Timestamp("1995-01-01").timestamp()
    hi = pd.Timestamp("2020-01-01").timestamp()
    assert lo <= r["timestamp"].min() and r["timestamp"].max() < hi
    # Each user's times are distinct, so the sequence order is unambiguous.
    assert not r.duplicated(["userId", "timestamp"]).any()
    spans = r.groupby("userId")["timestamp"].agg(lambda t: t.max() - t.min())
    assert (spans > 0).all()


def test_item_popularity_is_skewed(small):
    _, _, r = small
    counts = r["movieId"].value_counts().to_numpy()   # descending
    top = counts[: ITEMS // 10].sum()
    assert top / len(r) > 0.30
    # On a sparser catalogue the power law shows more clearly.
    sparse = pd.concat(ms.iter_rating_blocks(300, 2000, 9000, seed=1))
    c = sparse["movieId"].value_counts().to_numpy()
    assert c[: 200].sum() / len(sparse) > 0.5
    assert c[0] > 10 * np.median(c)


def test_movies_csv_quoting_and_genres(small):
    out, _, r = small
    with open(out / "movies.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    assert header == ["movieId", "title", "genres"]
    assert len(body) == ITEMS and all(len(row) == 3 for row in body)
    ids = [int(row[0]) for row in body]
    assert ids == sorted(ids) and len(set(ids)) == ITEMS
    assert ids[-1] > ITEMS                               # sparse, like ML
    assert set(r["movieId"]) <= set(ids)
    for _, title, genres in body:
        assert (genres == "(no genres listed)"
                or set(genres.split("|")) <= GENRES)
    # pandas agrees with the csv module, commas inside titles included.
    movies = pd.read_csv(out / "movies.csv")
    assert movies["title"].tolist() == [row[1] for row in body]


def test_titles_with_commas_and_quotes_round_trip(tmp_path):
    info = ms.generate(tmp_path, 100, 600, 1000, seed=3, progress=False)
    assert info["movies"] == 600
    raw = (tmp_path / "movies.csv").read_text(encoding="utf-8")
    with open(tmp_path / "movies.csv", newline="", encoding="utf-8") as f:
        titles = [row[1] for row in list(csv.reader(f))[1:]]
    comma = [t for t in titles if "," in t]
    assert comma, "expected titles with commas"
    for t in comma:
        assert '"' + t.replace('"', '""') + '"' in raw
    quoted = [t for t in titles if '"' in t]
    assert quoted and all('"' + t.replace('"', '""') + '"' in raw
                          for t in quoted)
    assert sum(t[-6] == "(" and t[-5:-1].isdigit() and t[-1] == ")"
               for t in titles) > 0.9 * len(titles)
    # links: one row per movie, 7-digit imdb ids.
    links = pd.read_csv(tmp_path / "links.csv", dtype={"imdbId": str})
    assert len(links) == 600 and links["imdbId"].str.len().min() >= 7
    tags = pd.read_csv(tmp_path / "tags.csv")
    ratings = pd.read_csv(tmp_path / "ratings.csv")
    pairs = set(zip(ratings["userId"], ratings["movieId"]))
    assert set(zip(tags["userId"], tags["movieId"])) <= pairs
    assert len(tags) < len(ratings) // 10


def test_deterministic_by_seed(small, tmp_path):
    out, _, _ = small
    again = tmp_path / "again"
    ms.generate(again, USERS, ITEMS, RATINGS, seed=7, progress=False)
    assert _digest(again) == _digest(out)
    other = tmp_path / "other"
    ms.generate(other, USERS, ITEMS, RATINGS, seed=8, progress=False)
    d_other = _digest(other)
    assert d_other["ratings.csv"] != _digest(out)["ratings.csv"]
    assert d_other["movies.csv"] != _digest(out)["movies.csv"]


def test_worker_count_does_not_change_bytes(tmp_path):
    users = 2 * ms.BLOCK_USERS + 100                      # three blocks
    a, b = tmp_path / "w1", tmp_path / "w2"
    ia = ms.generate(a, users, 300, 6 * users, seed=5, workers=1,
                     progress=False)
    ib = ms.generate(b, users, 300, 6 * users, seed=5, workers=2,
                     progress=False)
    assert ia["ratings"] == ib["ratings"] == 6 * users
    assert _digest(a) == _digest(b)


SPAWN_CHECK = """
import sys
import numpy as np
from dser_spark import synthetic as ms

if __name__ == "__main__":
    w = ms.build_world(ms.BLOCK_USERS + 100, 200, 6 * (ms.BLOCK_USERS + 100), seed=5)
    serial = list(ms._iter_blocks(w, 1))
    parallel = list(ms._iter_blocks(w, 2, sys.argv[1]))
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    print("same blocks")
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_start_method_does_not_change_blocks(method, tmp_path):
    # fork is the default (above); the package's worker also runs under the start methods that import it
    # afresh and pickle the world. They re-import the caller's main module, so the check runs as a script
    # of its own (not inside pytest, whose process holds a Spark JVM and its threads).
    import multiprocessing as mp
    import subprocess
    import sys
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method} here")
    script = tmp_path / "check.py"
    script.write_text(SPAWN_CHECK)
    done = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same blocks" in done.stdout, done.stderr[-2000:]


def test_rejects_impossible_sizes(tmp_path):
    with pytest.raises(ValueError, match="every user needs"):
        ms.generate(tmp_path, 100, 50, 499, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        ms.generate(tmp_path, 10, 20, 201, progress=False)


def test_user_counts_exact_and_clamped():
    rng = np.random.default_rng(0)
    for users, items, ratings in [(50, 10, 250), (50, 10, 500),
                                  (1000, 400, 7777)]:
        c = ms.user_rating_counts(users, items, ratings, rng)
        assert c.sum() == ratings and c.min() >= 5 and c.max() <= items


def test_dense_extreme_every_pair(tmp_path):
    # R = N x M: every user rates every item; still exact and duplicate-free.
    ms.generate(tmp_path, 20, 30, 600, seed=2, progress=False)
    r = pd.read_csv(tmp_path / "ratings.csv")
    assert len(r) == 600 and not r.duplicated(["userId", "movieId"]).any()


def test_cli(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--users", "50", "--items", "40",
         "--ratings", "600", "--out", str(out), "--seed", "4"],
        capture_output=True, text=True, check=True)
    assert "ratings=600" in proc.stdout and "seconds=" in proc.stdout
    assert "block 1/1" in proc.stderr
    assert len(pd.read_csv(out / "ratings.csv")) == 600
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--users", "50", "--items", "40",
         "--ratings", "10", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "every user needs" in bad.stderr
