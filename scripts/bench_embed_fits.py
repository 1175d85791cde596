#!/usr/bin/env python3
"""Benchmark: the embed stage's Doc2Vec fits all at once against two at a time, on real ml-100k.

    python scripts/bench_embed_fits.py [--reps 4]

The driver path of ``embed`` fits one Doc2Vec per scope (select, eval, serve: three fits of nearly
equal size) and one over the items' content. ``embed.embed_all`` runs them side by side; this times
it with all four at once (the stage's default) against two at a time (as many as this machine's
cores, as before), alternated ``--reps`` times in one process, and checks both give the same vectors.
Sequences are each ml-100k user's items in (timestamp, item) order from the ``recbole`` wheel, the
latest two held out for select and the latest one for eval, as ``sequences`` splits them; content
documents are titles and genres. Last line: ``RESULT two_at_a_time_s=... all_at_once_s=... ratio=...``
(best of the reps).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dser_spark.config import load_config  # noqa: E402
from dser_spark.embed import SequenceEmbedding, embed_all  # noqa: E402
from dser_spark.prepare.locate import wheel_directory  # noqa: E402


def ml100k() -> tuple[dict[str, tuple[np.ndarray, list[np.ndarray]]], pd.DataFrame, np.ndarray]:
    """(scope -> users, sequences), the items' content frame and the item universe of real ml-100k."""
    source = wheel_directory("builtin:ml-100k")
    inter = pd.read_csv(source / "ml-100k.inter", sep="\t").set_axis(["user", "item", "rating", "ts"], axis=1)
    histories = {u: g["item"].to_numpy() for u, g in inter.sort_values(["user", "ts", "item"]).groupby("user")}
    users = np.array(sorted(histories))
    inputs = {scope: (users, [histories[u][:len(histories[u]) - held] for u in users])
              for scope, held in (("select", 2), ("eval", 1), ("serve", 0))}
    raw = pd.read_csv(source / "ml-100k.item", sep="\t")
    items = pd.DataFrame({"item_id": raw.iloc[:, 0], "title": raw.iloc[:, 1],
                          "genres": raw.iloc[:, 3].fillna("").str.split()})
    return inputs, items, np.unique(inter["item"].to_numpy())


def fingerprint(fits: dict[str, SequenceEmbedding], content: np.ndarray) -> list[np.ndarray]:
    return [a for fit in fits.values() for a in (fit.item_vectors, fit.user_vectors)] + [content]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=4)
    args = ap.parse_args()
    cfg = load_config(None, [])
    inputs, items, universe = ml100k()
    tokens = sum(len(s) for s in inputs["serve"][1])
    print(f"ml-100k: {len(inputs['serve'][0])} users, {tokens:,} tokens in serve; 3 sequence fits + content, "
          f"{cfg.embed.epochs} epochs, one gensim worker each")
    cases = {"two at a time": 2, "all at once": None}
    times: dict[str, list[float]] = {name: [] for name in cases}
    reference = None
    for _ in range(args.reps):
        for name, at_once in cases.items():
            started = time.perf_counter()
            vectors = fingerprint(*embed_all(inputs, items, universe, cfg.embed, cfg.seed, at_once=at_once))
            times[name].append(time.perf_counter() - started)
            reference = reference or vectors
            if not all(np.array_equal(a, b) for a, b in zip(vectors, reference)):
                sys.exit(f"{name}: the vectors differ from the first run's")
            print(f"  {name:<14} {times[name][-1]:6.2f} s", flush=True)
    print(f"{'case':<14} {'best s':>7} {'all runs s':>30}")
    for name, secs in times.items():
        print(f"{name:<14} {min(secs):7.2f} {', '.join(f'{s:.2f}' for s in secs):>30}")
    two, everything = min(times["two at a time"]), min(times["all at once"])
    print("the same vectors in every run")
    print(f"RESULT two_at_a_time_s={two:.2f} all_at_once_s={everything:.2f} ratio={everything / two:.3f}")


if __name__ == "__main__":
    main()
