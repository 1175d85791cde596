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
"""

import argparse
import sys

from dser_spark.synthetic import generate


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
