#!/usr/bin/env python3
"""Benchmark: gensim Doc2Vec's cost per token against the catalogue size, all else equal.

    python scripts/bench_embed_vocab.py [--docs 6667] [--length 150] [--epochs 3] [--vocabs 4000 12000 62000]

Why `embed` grows faster than its ratings at scale. Each case fits the embed stage's own Doc2Vec
(``embed.train_sequence_model`` with the default ``EmbedConfig`` but ``--epochs``: PV-DBOW with item
vectors, window 5, 5 negatives, 64 dimensions, one worker; vocabulary and training timed together)
on the same number of documents and tokens: ``--docs`` sequences of ``--length`` items
drawn from a power-law catalogue (popularity ~ 1 / rank^0.8) of each ``--vocabs`` size (1M ratings
in the synthetic generator: 4k items; 5M: 12k; 25M: 62k). Only the catalogue changes, so any change
of tokens per second is the per-token cost of a larger item table. Last line:
``RESULT tokens_per_s_<vocab>=... cost_<largest>_vs_<smallest>=...``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dser_spark.config import EmbedConfig  # noqa: E402
from dser_spark.embed import train_sequence_model  # noqa: E402


def sequences(docs: int, length: int, vocab: int, seed: int) -> list[np.ndarray]:
    """``docs`` sequences of ``length`` item ids (1..``vocab``) from a power-law catalogue."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, vocab + 1) ** 0.8
    return list(rng.choice(np.arange(1, vocab + 1), size=(docs, length), p=popularity / popularity.sum()))


def tokens_per_second(seqs: list[np.ndarray], epochs: int) -> tuple[float, int]:
    """Speed of the embed stage's Doc2Vec fit over ``seqs``, and the items it kept."""
    started = time.perf_counter()
    model = train_sequence_model(np.arange(len(seqs)), seqs, EmbedConfig(epochs=epochs), seed=1)
    tokens = sum(len(s) for s in seqs) * epochs
    return tokens / (time.perf_counter() - started), len(model.wv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=6667)
    ap.add_argument("--length", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--vocabs", type=int, nargs="+", default=[4000, 12000, 62000])
    args = ap.parse_args()
    print(f"{args.docs} documents x {args.length} tokens x {args.epochs} epochs per case, one gensim worker")
    print(f"{'catalogue':>10} {'items seen':>10} {'k tokens/s':>11} {'cost per token vs first':>24}")
    rates = {}
    for vocab in args.vocabs:
        rate, seen = tokens_per_second(sequences(args.docs, args.length, vocab, seed=0), args.epochs)
        rates[vocab] = rate
        print(f"{vocab:>10,} {seen:>10,} {rate / 1e3:>11,.0f} {rates[args.vocabs[0]] / rate:>24.2f}", flush=True)
    small, large = args.vocabs[0], args.vocabs[-1]
    print("RESULT " + " ".join(f"tokens_per_s_{v}={r:.0f}" for v, r in rates.items())
          + f" cost_{large}_vs_{small}={rates[small] / rates[large]:.2f}")


if __name__ == "__main__":
    main()
