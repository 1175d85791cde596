#!/usr/bin/env python
"""The attention encoder's full-softmax loss: our chunked kernel against autograd over the whole matrix.

    scripts/bench_softmax.py [--rows 10000] [--items 3706] [--dim 64] [--threads 2] [--reps 7]

One training step's loss and gradients (states ``h`` (rows, dim), item vectors
(items, dim), item biases, one target per row), timed forward + backward:

- ``chunked``: ``attention._ChunkedSoftmaxCE`` as training calls it (``full_loss``'s
  chunk, bfloat16 products when ``--bf16``), the gradients formed chunk by chunk;
- ``autograd``: the textbook way, ``F.cross_entropy(h @ v.T + b, targets)`` with the
  whole (rows, items) logits matrix, the products under the same autocast.

The two run interleaved, ``--reps`` times each after a warm-up, so a slow spell
of the machine hits both; the best of each is reported, with the largest
difference between their losses and gradients. Defaults: one ML-1M batch
(64 users' windows of up to 200 items: ~10k positions) over ML-1M's items.
Last line: ``RESULT chunked_ms=… autograd_ms=… chunked_vs_autograd=…``.
"""
from __future__ import annotations

import argparse
import inspect
import time

import torch
import torch.nn.functional as F

from dser_spark import attention

CHUNK = inspect.signature(attention.full_loss).parameters["chunk"].default  # the chunk training uses


def inputs(rows: int, items: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """States, item vectors and biases shaped like a trained model's, and uniform targets."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, dim, generator=gen)
    v = torch.randn(items, dim, generator=gen) * 0.3
    b = torch.randn(items, generator=gen) * 0.1
    targets = torch.randint(0, items, (rows,), generator=gen)
    return h, v, b, targets


def chunked(h, v, b, targets, bf16: bool) -> tuple[torch.Tensor, ...]:
    """Loss and gradients from the training kernel, with ``full_loss``'s chunk."""
    h, v, b = (x.detach().requires_grad_() for x in (h, v, b))
    loss = attention._ChunkedSoftmaxCE.apply(h, v, b, targets, CHUNK, bf16, None)
    loss.backward()
    return loss.detach(), h.grad, v.grad, b.grad


def autograd(h, v, b, targets, bf16: bool) -> tuple[torch.Tensor, ...]:
    """Loss and gradients of cross-entropy over the whole logits matrix."""
    h, v, b = (x.detach().requires_grad_() for x in (h, v, b))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = h @ v.T
    loss = F.cross_entropy(logits.float() + b, targets)
    loss.backward()
    return loss.detach(), h.grad, v.grad, b.grad


def timed(fn, *args) -> tuple[float, tuple[torch.Tensor, ...]]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000, help="positions in the step")
    ap.add_argument("--items", type=int, default=3706, help="items in the softmax (ML-1M: 3706)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--bf16", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = inputs(args.rows, args.items, args.dim)
    for fn in (chunked, autograd):  # warm-up
        fn(*data, args.bf16)
    best, outs = {"chunked": float("inf"), "autograd": float("inf")}, {}
    for _ in range(args.reps):
        for name, fn in (("chunked", chunked), ("autograd", autograd)):
            seconds, out = timed(fn, *data, args.bf16)
            best[name] = min(best[name], seconds)
            outs[name] = out
    diff = max(float((a - b).abs().max()) for a, b in zip(outs["chunked"], outs["autograd"]))
    print(f"{args.rows:,} positions x {args.items:,} items, dim {args.dim}, bf16 {args.bf16}, "
          f"torch threads {args.threads}, best of {args.reps}")
    print(f"{'kernel':>10} {'ms':>9} {'positions/s':>13}")
    for name, seconds in best.items():
        print(f"{name:>10} {seconds * 1e3:9.1f} {args.rows / seconds:13,.0f}")
    print(f"largest difference in loss and gradients: {diff:.2e}")
    print(f"RESULT chunked_ms={best['chunked'] * 1e3:.1f} autograd_ms={best['autograd'] * 1e3:.1f} "
          f"chunked_vs_autograd={best['chunked'] / best['autograd']:.3f} rows={args.rows} items={args.items}")


if __name__ == "__main__":
    main()
