#!/usr/bin/env python3
"""Benchmark: gensim Doc2Vec's cost per token against the catalogue size, all else equal.

    python scripts/bench_embed_vocab.py [--docs 6667] [--length 150] [--epochs 3] [--vocabs 4000 12000 62000]

Why `embed` grows faster than its ratings at scale. Each case trains the embed stage's Doc2Vec
(PV-DBOW with item vectors, ``dbow_words=1``, window 5, 5 negatives, 64 dimensions, ``sample=0``,
one worker) on the same number of documents and tokens: ``--docs`` sequences of ``--length`` items
drawn from a power-law catalogue (popularity ~ 1 / rank^0.8) of each ``--vocabs`` size (1M ratings
in the synthetic generator: 4k items; 5M: 12k; 25M: 62k). Only the catalogue changes, so any change
of tokens per second is the per-token cost of a larger item table. Last line:
``RESULT tokens_per_s_<vocab>=... cost_<largest>_vs_<smallest>=...``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from gensim.models.doc2vec import Doc2Vec, TaggedDocument


def corpus(docs: int, length: int, vocab: int, seed: int) -> list[TaggedDocument]:
    """``docs`` documents of ``length`` item tokens from a power-law catalogue of ``vocab`` items."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, vocab + 1) ** 0.8
    names = np.array([f"i{i}" for i in range(vocab)])
    drawn = rng.choice(vocab, size=(docs, length), p=popularity / popularity.sum())
    return [TaggedDocument(list(names[row]), [d]) for d, row in enumerate(drawn)]


def tokens_per_second(documents: list[TaggedDocument], epochs: int) -> tuple[float, int]:
    """Training speed of the embed stage's Doc2Vec settings (vocabulary built first, not timed)."""
    model = Doc2Vec(vector_size=64, window=5, min_count=1, negative=5, hs=0, dm=0, dbow_words=1, epochs=epochs,
                    workers=1, seed=1, sample=0)
    model.build_vocab(documents)
    started = time.perf_counter()
    model.train(documents, total_examples=len(documents), epochs=epochs)
    tokens = sum(len(d.words) for d in documents) * epochs
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
        rate, seen = tokens_per_second(corpus(args.docs, args.length, vocab, seed=0), args.epochs)
        rates[vocab] = rate
        print(f"{vocab:>10,} {seen:>10,} {rate / 1e3:>11,.0f} {rates[args.vocabs[0]] / rate:>24.2f}", flush=True)
    small, large = args.vocabs[0], args.vocabs[-1]
    print("RESULT " + " ".join(f"tokens_per_s_{v}={r:.0f}" for v, r in rates.items())
          + f" cost_{large}_vs_{small}={rates[small] / rates[large]:.2f}")


if __name__ == "__main__":
    main()
