"""Training the DSER network: on the driver, or as one process of a data-parallel fit (``distributed``).

Each epoch draws fresh negatives with the same seeded function the sequences
stage uses for ``train_samples``, so epoch K here equals that table for K.
With ``objective: next`` every positive is scored with the recent windows of
the user's history *before* it (next-item training: what the model is asked
at serving time); ``static`` uses the user's final windows for every sample.
Losses: BCE (pointwise), BPR (each positive against each of its negatives) or
sampled softmax (each positive against its own negatives).

Early stopping on a validation callback keeps the best weights; checkpoints
after every epoch let a killed run resume where it stopped (same result as an
uninterrupted run: negatives and shuffles are seeded by (seed, epoch)).
Both paths run the same ``fit``; a ``Replica`` says how one process of a
distributed fit takes part (its shard of the positives, DDP, sums over the
processes).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dser_spark.config import ModelConfig, TrainConfig
from dser_spark.model import DSER, Inputs, baseline_config, seeded, window_means
from dser_spark.artifacts import Trained
from dser_spark.negatives import negative_weights, user_negatives

log = logging.getLogger("dser_spark")

Validator = Callable[[DSER], float]  # validation HR@k of a model (higher is better)


@dataclass
class FitData:
    """What one fit needs, in dense index space (idx = rank of the sorted id).

    ``user_pos`` holds each user's positives in time order (in a process of a
    distributed fit: its shard's users', the others' are empty). With ``windows``
    the recent vectors are rebuilt from ``inputs.item_vectors`` and the
    sequences (mean of the last k_w items), so training contexts and serving
    vectors come from one function.
    """

    user_ids: np.ndarray           # sorted (U,)
    item_ids: np.ndarray           # sorted (I,): the item universe
    user_pos: list[np.ndarray]     # per user (aligned with user_ids): positive item ids, oldest first
    inputs: Inputs
    windows: tuple[int, ...] = ()

    def __post_init__(self):
        self.lengths = np.array([len(p) for p in self.user_pos], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        flat = np.concatenate(self.user_pos) if len(self.user_pos) else np.empty(0, np.int64)
        # int32 (4 bytes a positive each): the fit's largest arrays after an epoch's draws
        self.flat_items = torch.from_numpy(np.searchsorted(self.item_ids, flat).astype(np.int32))
        del flat
        self.flat_user = torch.from_numpy(np.repeat(np.arange(len(self.user_pos), dtype=np.int32), self.lengths))
        if self.windows:
            self.inputs = dataclasses.replace(
                self.inputs, windows=torch.tensor(self.windows, dtype=torch.long),
                recent_vectors=window_means(self.inputs.item_vectors.float(), self.last_items(),
                                            torch.tensor(self.windows)))

    @property
    def max_window(self) -> int:
        return max(self.windows) if self.windows else 0

    def context(self, positions: torch.Tensor) -> torch.Tensor:
        """(B, K) item indexes before each flat position, newest first, -1 past the user's start."""
        k = self.max_window
        back = positions[:, None] - 1 - torch.arange(k)[None, :]
        starts = torch.from_numpy(self.starts)[self.flat_user[positions]]
        ok = back >= starts[:, None]
        return torch.where(ok, self.flat_items[back.clamp(min=0)], torch.full_like(back, -1))

    def last_items(self) -> torch.Tensor:
        """(U, K) each user's last K item indexes, newest first (-1 pad)."""
        ends = torch.from_numpy(self.starts + self.lengths)
        k = self.max_window
        back = ends[:, None] - 1 - torch.arange(k)[None, :]
        ok = back >= torch.from_numpy(self.starts)[:, None]
        return torch.where(ok, self.flat_items[back.clamp(min=0)] if len(self.flat_items) else back,
                           torch.full_like(back, -1))


def epoch_groups(data: FitData, negatives: int, seed: int, epoch: int, weights: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(user_idx (N,), items (N, 1 + negatives)), both int32, for one epoch.

    Row n is the n-th positive (flat position n, column 0) with its own fresh negatives, drawn by
    ``weights``: each user's draws are those of ``negatives.samples_for_users`` (the ``train_samples``
    table) for the same epoch, written straight into the user's rows, in order; -1 fills the rows of
    users with too few eligible negatives. Users without positives (in a distributed fit: the other
    processes' users) draw nothing. Only this array is allocated per positive (4 bytes a column): an
    epoch's negatives are drawn while the previous epoch trains.
    """
    n_pos = len(data.flat_items)
    items = np.full((n_pos, 1 + negatives), -1, dtype=np.int32)
    items[:, 0] = data.flat_items.numpy()
    cdf = None if weights is None else np.cumsum(weights)
    for user in np.flatnonzero(data.lengths) if negatives > 0 else []:
        start, count = int(data.starts[user]), int(data.lengths[user])
        drawn = user_negatives(data.user_ids[user], data.user_pos[user], data.item_ids, negatives, seed, epoch, cdf)
        block = np.full(count * negatives, -1, dtype=np.int32)
        block[:len(drawn)] = np.searchsorted(data.item_ids, drawn)
        items[start:start + count, 1:] = block.reshape(count, negatives)
    return data.flat_user, torch.from_numpy(items)


def prefetched_groups(data: FitData, negatives: int, seed: int, epochs: range, weights: np.ndarray | None
                      ) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor]]]:
    """(epoch, ``epoch_groups``) for each of ``epochs``; the next epoch's negatives are drawn in a
    background thread while the caller trains on the current one (same draws: seeded per epoch)."""
    with ThreadPoolExecutor(1, thread_name_prefix="negatives") as pool:
        upcoming = pool.submit(epoch_groups, data, negatives, seed, epochs[0], weights) if len(epochs) else None
        for n, epoch in enumerate(epochs):
            current = upcoming.result()
            if n + 1 < len(epochs):
                upcoming = pool.submit(epoch_groups, data, negatives, seed, epochs[n + 1], weights)
            yield epoch, current


def group_loss(logits: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss of (B, 1 + n) logits whose column 0 is the positive; ``valid`` masks padding."""
    if kind == "bce":
        target = torch.zeros_like(logits)
        target[:, 0] = 1.0
        per = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (per * valid).sum() / valid.sum()
    if kind == "bpr":
        diff = logits[:, :1] - logits[:, 1:]
        per = -torch.nn.functional.logsigmoid(diff)
        mask = valid[:, 1:]
        return (per * mask).sum() / mask.sum().clamp(min=1.0)
    if kind == "softmax":
        masked = logits.masked_fill(valid == 0, float("-inf"))
        return torch.nn.functional.cross_entropy(masked, torch.zeros(len(logits), dtype=torch.long,
                                                                     device=logits.device))
    raise ValueError(f"unknown loss {kind!r}")


def _fingerprint(data: FitData, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> str:
    """What a checkpoint must match to be resumed: settings and data shape."""
    settings = {k: v for k, v in dataclasses.asdict(train_cfg).items() if k not in ("show_progress", "checkpoint_dir")}
    blob = json.dumps([dataclasses.asdict(model_cfg), settings, seed, len(data.user_ids), len(data.item_ids),
                       int(len(data.flat_items)), int(data.flat_items.sum()), list(data.windows),
                       float(data.inputs.item_out_vectors.double().sum())], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class Optimizer:
    """Adam (fused: ~12% faster) on the model's parameters, but lazy Adam (``SparseAdam``) on the GMF ID
    embeddings when they have sparse gradients (``train.sparse_ids``): a step touches only its batch's rows.

    ``average_sparse`` (a distributed fit) replaces the sparse gradients by their average over the
    processes before each step; DDP averages the dense ones."""

    def __init__(self, model: DSER, train_cfg: TrainConfig,
                 average_sparse: Callable[[list[nn.Parameter]], None] | None = None):
        self.sparse = [emb.weight for emb in (model.user_emb, model.item_emb) if emb.sparse]
        sparse = {id(p) for p in self.sparse}
        dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse]
        self.parts = {"dense": torch.optim.Adam(dense, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                                fused=True)}
        if self.sparse:
            self.parts["sparse"] = torch.optim.SparseAdam(self.sparse, lr=train_cfg.lr)
        self.average_sparse = average_sparse if self.sparse else None

    def zero_grad(self) -> None:
        for opt in self.parts.values():
            opt.zero_grad()

    def step(self) -> None:
        if self.average_sparse is not None:
            self.average_sparse(self.sparse)
        for opt in self.parts.values():
            opt.step()

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.parts.items():
            opt.load_state_dict(state[name])


class Checkpoint:
    """Per-epoch training state in a local directory (safetensors + json; optimizer via torch.save)."""

    def __init__(self, directory: str | Path | None, fingerprint: str):
        self.dir = Path(directory) if directory else None
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        if self.dir is None or not (self.dir / "progress.json").is_file():
            return None
        progress = json.loads((self.dir / "progress.json").read_text())
        if progress.get("fingerprint") != self.fingerprint:
            log.info("checkpoint %s is for other settings: starting afresh", self.dir)
            return None
        progress["model"] = load_file(str(self.dir / "model.safetensors"))
        progress["best"] = load_file(str(self.dir / "best.safetensors"))
        progress["optim"] = torch.load(self.dir / "optim.pt", weights_only=True)
        return progress

    def save(self, model: DSER, best: dict, opt: Optimizer, progress: dict) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir, prefix=".tmp-"))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
        torch.save(opt.state_dict(), tmp / "optim.pt")
        (tmp / "progress.json").write_text(json.dumps({**progress, "fingerprint": self.fingerprint}))
        for name in ("model.safetensors", "best.safetensors", "optim.pt", "progress.json"):  # json last
            os.replace(tmp / name, self.dir / name)
        shutil.rmtree(tmp, ignore_errors=True)

    def clear(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            try:  # the run's directory too, once its last fit is done
                self.dir.parent.rmdir()
            except OSError:
                pass


@dataclass(frozen=True)
class Replica:
    """How one process of a data-parallel fit (``distributed``) takes part in ``fit``.

    Its ``FitData`` holds every user of the fit but only its shard's positives;
    the model, the optimiser and the epoch seeds are the same in every process.
    """

    total_positives: int                              # of the fit, over all processes: the global batches
    wrap: Callable[[nn.Module], nn.Module]            # the data-parallel wrapper (DDP: averages gradients)
    all_sum: Callable[[torch.Tensor], torch.Tensor]   # element-wise sum over the processes
    average_sparse: Callable[[list[nn.Parameter]], None]  # their sparse gradients averaged (DDP ignores them)
    device: torch.device = torch.device("cpu")


class BatchScorer(nn.Module):
    """Logits of a batch of (user, candidates) groups: the training step's forward (what DDP wraps)."""

    def __init__(self, model: DSER):
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """(B, M) logits; ``context`` (B, K): the items before each positive (next-item training), else None."""
        m = self.model
        recent = m.recent(context) if context is not None else None
        return m.score_items(m.user_part(users, recent), m.item_part(items.clamp(min=0)))


def batch_edges(n: int, total: int, batch_size: int) -> list[int]:
    """Bounds of a process's share of each global batch of ``batch_size`` out of ``total`` positives.

    On the driver (``n == total``) the batches are consecutive slices of
    ``batch_size``; a process holding ``n`` of them takes the same number of
    steps with a share of ``n / total`` each, so the processes step together
    and every step is one global batch of about ``batch_size``.
    """
    steps = -(-total // batch_size)
    return np.minimum(np.arange(steps + 1) * batch_size * n // max(total, 1), n).tolist()


def _summed(values: np.ndarray, replica: Replica | None) -> np.ndarray:
    """``values`` summed over the processes of a distributed fit (as they are on the driver)."""
    return values if replica is None else replica.all_sum(torch.from_numpy(values)).numpy()


def train_epoch(step: nn.Module, opt: Optimizer, data: FitData,
                groups: tuple[torch.Tensor, torch.Tensor], order: torch.Tensor,
                edges: Sequence[int], loss_kind: str, next_item: bool, device: torch.device,
                bar: tqdm) -> float:
    """One pass over an epoch's ``groups`` (``epoch_groups``) in the batches ``order[edges[k]:edges[k + 1]]``;
    returns the sum over batches of loss x batch size. ``bar`` iterates over the batch numbers."""
    users, items = groups
    total = 0.0
    for k in bar:
        start, stop = edges[k], edges[k + 1]
        idx = order[start:stop]  # flat positions
        u, cand = users[idx].to(device, torch.long), items[idx].to(device, torch.long)
        context = data.context(idx).to(device) if next_item else None
        loss = group_loss(step(u, cand, context), (cand >= 0).float(), loss_kind)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        if k % 50 == 0:
            bar.set_postfix(loss=f"{total / max(stop, 1):.4f}")
    return total


def pretrained_state(data: FitData, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int, label: str,
                     validate: Validator | None, epochs: int | None, checkpoint_dir: str | Path | None,
                     replica: Replica | None = None) -> dict[str, torch.Tensor]:
    """NCF pre-training: GMF and MLP fit alone, merged into the starting state of ``model_cfg``'s model.

    The fused output unit is ``[alpha * GMF's weights, (1 - alpha) * MLP's]`` with
    the biases mixed alike; the taste terms keep their initial values.
    """
    plain = dataclasses.replace(train_cfg, pretrain=False)
    parts = {}
    for name in ("GMF", "MLP"):
        sub = Path(checkpoint_dir) / f"pretrain-{name}" if checkpoint_dir else None
        parts[name] = fit(data, baseline_config(model_cfg, name), plain, seed, f"{label} pretrain {name}",
                          validate, epochs, sub, replica).model.state_dict()
    with seeded(seed):
        state = DSER(data.inputs, model_cfg).state_dict()
    for key in state:
        if key.startswith(("user_emb.", "item_emb.")):
            state[key] = parts["GMF"][key].clone()
        elif key.startswith(("mlp_user.", "mlp_item.", "tower.")):
            state[key] = parts["MLP"][key].clone()
    alpha = train_cfg.pretrain_alpha
    state["out.weight"] = torch.cat([alpha * parts["GMF"]["out.weight"], (1 - alpha) * parts["MLP"]["out.weight"]], 1)
    state["out.bias"] = alpha * parts["GMF"]["out.bias"] + (1 - alpha) * parts["MLP"]["out.bias"]
    return state


def fit(data: FitData, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int,
        label: str = "train", validate: Validator | None = None, epochs: int | None = None,
        checkpoint_dir: str | Path | None = None, replica: Replica | None = None) -> Trained:
    """Train DSER with Adam on positives + fresh negatives per epoch.

    With ``validate`` the metric is computed before training and after each
    epoch; training stops after ``train.patience`` epochs without a gain and
    the best weights (possibly the untrained ones: epoch 0) are kept.
    ``epochs`` overrides ``train_cfg.epochs`` (a refit for the chosen count).
    ``replica``: this is one process of a distributed fit (``validate`` must
    then return the same value in every process).
    """
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    device = replica.device if replica is not None else torch.device("cpu")
    with seeded(seed):
        model = DSER(data.inputs, model_cfg).to(device)
    for emb in (model.user_emb, model.item_emb):  # before DDP wraps the model: it leaves sparse ones alone
        emb.sparse = train_cfg.sparse_ids
    step = BatchScorer(model) if replica is None else replica.wrap(BatchScorer(model))
    n_epochs = train_cfg.epochs if epochs is None else epochs
    n_total = replica.total_positives if replica is not None else len(data.flat_items)
    opt = Optimizer(model, train_cfg, replica.average_sparse if replica is not None else None)
    next_item = train_cfg.objective == "next" and data.max_window > 0 and model_cfg.use_recency
    weights = negative_weights(train_cfg, lambda: _summed(
        np.bincount(data.flat_items.numpy(), minlength=len(data.item_ids)), replica))
    ckpt = Checkpoint(checkpoint_dir, _fingerprint(data, model_cfg, train_cfg, seed) + f"-{n_epochs}")
    history: list[dict] = []
    best_state = copy.deepcopy(model.state_dict())
    best_metric, best_epoch, bad, first = float("-inf"), 0, 0, 0
    resumed = ckpt.load()
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optim"])
        best_state, history = resumed["best"], resumed["history"]
        best_metric, best_epoch, bad, first = (resumed["best_metric"], resumed["best_epoch"], resumed["bad"],
                                              resumed["epoch"])
        log.info("%s: resumed from checkpoint after epoch %d", label, first)
    elif train_cfg.pretrain and model_cfg.use_gmf and model_cfg.use_mlp:
        model.load_state_dict(pretrained_state(data, model_cfg, train_cfg, seed, label, validate, epochs,
                                               checkpoint_dir, replica))
        best_state = copy.deepcopy(model.state_dict())
    if resumed is None and validate is not None:
        best_metric = validate(model.eval())
        history.append({"epoch": 0, "loss": None, "samples": 0, "val_hr": best_metric, "seconds": 0.0})
        log.info("%s epoch 0 (starting weights): validation HR %.4f", label, best_metric)
    stopped = validate is not None and train_cfg.patience and bad >= train_cfg.patience
    epochs_to_run = range(first, 0 if stopped else n_epochs)
    for epoch, groups in prefetched_groups(data, train_cfg.negatives, seed, epochs_to_run, weights):
        started = time.time()
        users, items = groups
        order = torch.randperm(len(users), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        edges = batch_edges(len(users), n_total, train_cfg.batch_size)
        step.train()
        # a bar only on a terminal (disable=None); a log file gets the one line per epoch below
        note = f" (best validation HR {best_metric:.4f})" if validate is not None else ""
        bar = tqdm(range(len(edges) - 1), desc=f"{label} epoch {epoch + 1}/{n_epochs}{note}", unit="batch",
                   disable=None if train_cfg.show_progress else True, leave=False)
        total = train_epoch(step, opt, data, groups, order, edges, train_cfg.loss, next_item, device, bar)
        total, samples = _summed(np.array([total, float(items.ge(0).sum())]), replica).tolist()
        entry = {"epoch": epoch + 1, "loss": total / max(n_total, 1), "samples": int(samples),
                 "seconds": time.time() - started}
        model.eval()
        if validate is not None:
            entry["val_hr"] = validate(model)
            if entry["val_hr"] > best_metric:
                best_metric, best_epoch, bad = entry["val_hr"], epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        else:
            best_epoch, best_state = epoch + 1, None
        history.append(entry)
        log.info("%s epoch %d/%d: loss %.4f%s (%.0fs)", label, epoch + 1, n_epochs, entry["loss"],
                 f", validation HR {entry['val_hr']:.4f}" if "val_hr" in entry else "", entry["seconds"])
        ckpt.save(model, best_state if best_state is not None else model.state_dict(), opt,
                  {"epoch": epoch + 1, "history": history, "best_metric": best_metric,
                   "best_epoch": best_epoch, "bad": bad})
        if validate is not None and train_cfg.patience and bad >= train_cfg.patience:
            log.info("%s: early stop after epoch %d (best epoch %d, HR %.4f)", label, epoch + 1, best_epoch,
                     best_metric)
            break
    if validate is not None:
        model.load_state_dict(best_state)
        for entry in history:
            entry["best"] = entry["epoch"] == best_epoch
    else:
        best_epoch = history[-1]["epoch"] if history else 0
    ckpt.clear()
    return Trained(model.eval(), data.user_ids, data.item_ids, history, best_epoch)
