"""The scoring kernel: logits of user blocks against item blocks, and an exact blocked top-K.

This is the hot path of ``recommend`` and of the evaluation's all-items
ranking. It uses the structure of the model:

* the GMF part and the linear taste part are one matrix product per user
  block x item block;
* the first MLP layer is separable: its item half is computed once per item
  and its user half once per user, and only the rest of the tower runs per
  pair, in chunks of pairs sized to stay in the CPU cache;
* a running exact top-K per user is kept across item blocks (``torch.topk``,
  ties broken by the smaller item id), never an all-pairs matrix of all users.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import nn

from dser_spark.ids import lookup
from dser_spark.model import DSER

_DEFAULT_L2 = 1 << 20
TOP_CHUNK = 64  # columns per chunk whose maximum prunes the top-K (block_top)
_EMPTY = np.empty(0, dtype=np.int64)
T = TypeVar("T")


def _tower_layers(tower: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(W^T, b) of each Linear of a Linear-ReLU tower."""
    modules = list(tower)
    if any(not isinstance(m, nn.Linear) for m in modules[0::2]) or \
            any(not isinstance(m, nn.ReLU) for m in modules[1::2]) or len(modules) % 2:
        raise TypeError(f"the MLP tower must alternate Linear and ReLU, got {tower}")
    return [(m.weight.T.contiguous(), m.bias) for m in modules[0::2]]


def l2_cache_bytes() -> int:
    """Size of one core's L2 cache from Linux sysfs (1 MiB when unknown)."""
    units = {"K": 1 << 10, "M": 1 << 20}
    for entry in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (entry / "level").read_text().strip() == "2":
                size = (entry / "size").read_text().strip()
                return int(size.rstrip("KM")) * units.get(size[-1], 1)
        except (OSError, ValueError):
            break
    return _DEFAULT_L2


def cache_pairs(first_width: int) -> int:
    """Pairs per tower chunk: the first layer's fp32 activations (the widest) take 4 x L2.

    They are written once and streamed once, so they may spill to L3; larger
    chunks amortise the per-op overhead (measured best on a Zen 4 EPYC).
    """
    return int(np.clip(l2_cache_bytes() // first_width, 1024, 65536))


class Kernel:
    """Logits of blocks of users against a fixed set of candidate items.

    logit(u, i) = [g_u * w_gmf, t_u, 1] . [g_i, t_i, b] + w_mlp . tower(relu(h_u + h_i))

    The first term is one matrix product; only the tower runs per pair, in
    chunks of ``pairs`` pairs. ``mlp=False`` scores the dot-product parts only.
    Blocks are computed into per-thread scratch memory that is reused, so the
    large blocks never pay for fresh pages.
    """

    def __init__(self, model: DSER, items: torch.Tensor, mlp: bool = True, pairs: int = 0):
        with torch.no_grad():
            gi, hi, li = model.item_part(items)
            self.w_gmf, self.w_mlp = (w.detach() for w in model._fusion_weights())
            self.gmf = model.cfg.use_gmf
            bias = model.out.bias.detach().expand(len(items), 1)
            self.item_dot = torch.cat([gi, li, bias] if self.gmf else [li, bias], 1).T.contiguous()  # (D, N)
            self.item_hidden = hi.contiguous()                                                        # (N, h0)
            self.layers = [(w.detach(), b.detach()) for w, b in _tower_layers(model.tower)]
        self.mlp = mlp and model.cfg.use_mlp
        self.widths = [hi.shape[1]] + [w.shape[1] for w, _ in self.layers]
        self.pairs = pairs or (cache_pairs(self.widths[0]) if self.mlp else 0)
        self._scratch = threading.local()

    @property
    def n_items(self) -> int:
        return self.item_dot.shape[1]

    def flops_per_pair(self) -> int:
        """Multiply-adds x 2 (and the first-layer add) of one (user, item) logit."""
        flops = 2 * self.item_dot.shape[0]
        if self.mlp:
            flops += self.widths[0] + 2 * sum(a * b for a, b in zip(self.widths, self.widths[1:])) \
                + 2 * self.widths[-1]
        return flops

    def users(self, parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The user side of a block: (dot-product part, first-layer MLP half)."""
        gu, hu, lu = parts
        ones = lu.new_ones((lu.shape[0], 1))
        return torch.cat([gu * self.w_gmf, lu, ones] if self.gmf else [lu, ones], 1), hu.contiguous()

    def logits(self, users: tuple[torch.Tensor, torch.Tensor], start: int, stop: int) -> torch.Tensor:
        """(B, stop - start) logits of the user block against candidate items start:stop.

        The result lives in scratch memory: valid until this thread's next call.
        """
        dot, hidden = users
        out = self._scratch_tensor("logits", (dot.shape[0], stop - start))
        torch.mm(dot, self.item_dot[:, start:stop], out=out)
        if self.mlp:
            self._add_tower(out, hidden, start, stop)
        return out

    def _scratch_tensor(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reusable per-thread float tensor of ``shape`` (grown when too small)."""
        numel = math.prod(shape)
        buf = getattr(self._scratch, name, None)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel)
            setattr(self._scratch, name, buf)
        return buf[:numel].view(shape)

    def _add_tower(self, out: torch.Tensor, hidden: torch.Tensor, start: int, stop: int) -> None:
        """out += w_mlp . tower(relu(h_u + h_i)), one cache-sized chunk of pairs at a time."""
        cols = min(stop - start, self.pairs)
        rows = max(1, self.pairs // cols)
        for r0 in range(0, hidden.shape[0], rows):
            r1 = min(r0 + rows, hidden.shape[0])
            for c0 in range(start, stop, cols):
                c1 = min(c0 + cols, stop)
                p = (r1 - r0) * (c1 - c0)
                x = self._scratch_tensor("layer0", (r1 - r0, c1 - c0, self.widths[0]))
                torch.add(hidden[r0:r1, None, :], self.item_hidden[None, c0:c1, :], out=x)
                x = x.view(p, self.widths[0]).relu_()
                for layer, (wt, b) in enumerate(self.layers, start=1):
                    x = torch.addmm(b, x, wt, out=self._scratch_tensor(f"layer{layer}", (p, wt.shape[1]))).relu_()
                y = torch.mv(x, self.w_mlp, out=self._scratch_tensor("mlp", (p,)))
                out[r0:r1, c0 - start:c1 - start] += y.view(r1 - r0, c1 - c0)


# ------------------------------------------------------------------- top-K
def block_top(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top-``k`` set of each row (values, columns); among equal values the lower column wins.

    Wide rows are pruned first: the maximum of each chunk of ``TOP_CHUNK``
    columns is one vectorised pass, and the top-``k`` values can only lie in
    the ``k`` chunks with the largest maxima (or in the columns after the last
    whole chunk), because ``k`` values are at least the ``k``-th largest
    maximum. Rows where another chunk ties that maximum, or with fewer than
    ``k`` finite chunks, are ranked over all their columns.
    """
    rows, n = logits.shape
    chunks = n // TOP_CHUNK
    if chunks < 16 * k:
        return _sorted_top(logits, k)
    whole = chunks * TOP_CHUNK
    maxima = logits[:, :whole].view(rows, chunks, TOP_CHUNK).amax(2)
    top = torch.topk(maxima, k, dim=1)
    threshold = top.values[:, -1:]  # the k-th largest maximum
    picked = top.indices.sort(dim=1).values  # ascending: ties keep the lower column
    cols = (picked[:, :, None] * TOP_CHUNK + torch.arange(TOP_CHUNK)).view(rows, k * TOP_CHUNK)
    if whole < n:
        cols = torch.cat([cols, torch.arange(whole, n).expand(rows, n - whole)], 1)
    vals, found = _sorted_top(logits.gather(1, cols), k)
    cols = cols.gather(1, found)
    unsure = ((maxima >= threshold).sum(1) > k) | ~torch.isfinite(threshold[:, 0])
    if bool(unsure.any()):
        again = unsure.nonzero().squeeze(1)
        vals[again], cols[again] = _sorted_top(logits[again], k)
    return vals, cols


def _sorted_top(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``block_top`` over every column.

    ``topk`` of k + 1 shows whether the k-th value ties with the next one;
    only rows with such a tie at the boundary are stably sorted in full.
    """
    n = logits.shape[1]
    if n <= k:
        return torch.sort(logits, dim=1, descending=True, stable=True)
    vals, cols = torch.topk(logits, k + 1, dim=1)
    tie = (vals[:, k - 1] == vals[:, k]) & torch.isfinite(vals[:, k - 1])
    if bool(tie.any()):
        rows = tie.nonzero().squeeze(1)
        v, c = torch.sort(logits[rows], dim=1, descending=True, stable=True)
        vals[rows, :k], cols[rows, :k] = v[:, :k], c[:, :k]
    return vals[:, :k], cols[:, :k]


def merge_top(best: tuple[torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor],
              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of two candidate lists per row, ordered by value desc then column asc."""
    vals, cols = torch.cat([best[0], new[0]], 1), torch.cat([best[1], new[1]], 1)
    by_col = torch.argsort(cols, dim=1, stable=True)
    vals, cols = vals.gather(1, by_col), cols.gather(1, by_col)
    by_val = torch.argsort(vals, dim=1, descending=True, stable=True)[:, :k]
    return vals.gather(1, by_val), cols.gather(1, by_val)


def top_k(kernel: Kernel, users: tuple[torch.Tensor, torch.Tensor], seen: tuple[np.ndarray, np.ndarray],
          k: int, item_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` (logits, candidate columns) per user; ``seen`` (rows, columns sorted) are excluded."""
    n_users = users[0].shape[0]
    best = (torch.empty((n_users, 0)), torch.empty((n_users, 0), dtype=torch.long))
    rows, cols = seen
    with torch.no_grad():
        for start in range(0, kernel.n_items, item_block):
            stop = min(start + item_block, kernel.n_items)
            logits = kernel.logits(users, start, stop)
            lo, hi = np.searchsorted(cols, [start, stop])
            if hi > lo:
                logits[torch.from_numpy(rows[lo:hi]), torch.from_numpy(cols[lo:hi] - start)] = -torch.inf
            vals, found = block_top(logits, k)
            best = merge_top(best, (vals, found + start), k)
    return best


def seen_columns(cand_ids: np.ndarray, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(row, candidate column) of every history item that is a candidate, sorted by column."""
    flat = np.concatenate(histories) if histories else _EMPTY
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols, ok = lookup(cand_ids, flat)
    order = np.argsort(cols[ok], kind="stable")
    return rows[ok][order], cols[ok][order]


# ----------------------------------------------------------- on executors
_WORKER: dict[str, object] = {}


def on_worker(key: str, build: Callable[[], T]) -> T:
    """``build()`` once per Python worker for a broadcast ``key`` (models load once, not once per task);
    a new key replaces the previous one, so a worker holds one job's models at a time."""
    if key not in _WORKER:
        _WORKER.clear()
        _WORKER[key] = build()
    return _WORKER[key]


def task_threads() -> None:
    """Give torch as many threads as the running Spark task has CPUs (1 outside a task)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    torch.set_num_threads(max(1, int(ctx.cpus())) if ctx else 1)
