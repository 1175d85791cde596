#!/usr/bin/env python3
"""Write synthetic MovieLens data in the ml-25m layout, at any scale.

    python scripts/make_synthetic.py --users 162000 --items 62000 \\
        --ratings 25000000 --out /tmp/synth25m [--seed 0] [--workers 2] [--quiet]

writes ``ratings.csv``, ``movies.csv``, ``links.csv`` and ``tags.csv`` into
``--out`` (the files and their shape: :mod:`dser_spark.synthetic`, which does
the work; import it rather than this script). Exactly ``--ratings`` rows for
``--users`` users (each >= 5 ratings) over ``--items`` movies; the bytes
depend only on (users, items, ratings, seed), never on ``--workers``
(generator processes, default min(2, cpus)). Progress lines go to stderr
unless ``--quiet``; the last line on stdout is

    make_synthetic: users=… movies=… ratings=… rated_movies=… tags=… bytes=… seconds=… out=…

Impossible sizes (fewer than 5 ratings a user, more ratings than user x item
pairs) exit with status 2 and the reason.

``--domain books`` writes a synthetic bookshop with string ids instead
(:mod:`dser_spark.synthetic_books`): Parquet directories ``events/`` and
``books/`` for ``--users`` customers, ``--items`` books and ``--ratings``
events (``--workers`` and ``--quiet`` do not apply); the last line is

    make_synthetic: domain=books users=… books=… events=… out=…
"""

import argparse
import sys

from dser_spark.synthetic import generate
from dser_spark.synthetic_books import generate_books


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Write synthetic MovieLens ml-25m-layout CSVs, or a "
                    "synthetic bookshop (--domain books).")
    ap.add_argument("--domain", choices=("movies", "books"), default="movies",
                    help="movies: MovieLens CSVs; books: Parquet events and "
                         "books with string ids (--items books, --ratings "
                         "events)")
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
    if a.domain == "books":
        try:
            r = generate_books(a.out, a.users, a.items, a.ratings, a.seed)
        except ValueError as e:
            ap.error(str(e))
        print(f"make_synthetic: domain=books users={r['users']} "
              f"books={r['books']} events={r['events']} out={a.out}")
        return 0
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
