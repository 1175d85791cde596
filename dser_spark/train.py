"""Training the DSER network on the driver, and its artifacts (no pickle).

Each epoch draws fresh negatives with the same seeded function the sequences
stage uses for ``train_samples``, so epoch K here equals that table for K.
Artifacts: ``model.safetensors`` (state dict, incl. the frozen Doc2Vec inputs),
``config.yaml``, ``user_index.parquet`` / ``item_index.parquet``, ``history.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dser_spark.config import Config, ModelConfig, TrainConfig, from_dict
from dser_spark.model import DSER, Inputs, from_state
from dser_spark.sequences import samples_for_users

log = logging.getLogger("dser_spark")


@dataclass
class FitData:
    """What one fit needs, in dense index space (idx = rank of the sorted id)."""

    user_ids: np.ndarray           # sorted (U,)
    item_ids: np.ndarray           # sorted (I,): the item universe
    user_pos: list[np.ndarray]     # per user (aligned with user_ids): positive item ids
    inputs: Inputs


@dataclass
class Trained:
    """A trained model with its id indexes and history."""

    model: DSER
    user_ids: np.ndarray
    item_ids: np.ndarray
    history: list[dict] = field(default_factory=list)


def epoch_samples(data: FitData, negatives: int, seed: int, epoch: int) -> tuple[np.ndarray, ...]:
    """(user_idx, item_idx, label) for one epoch: positives + fresh negatives."""
    batch = pd.DataFrame({"user_id": data.user_ids, "pos_items": data.user_pos})
    df = samples_for_users(batch, data.item_ids, negatives, seed, epoch)
    u = np.searchsorted(data.user_ids, df["user_id"].to_numpy())
    i = np.searchsorted(data.item_ids, df["item_id"].to_numpy())
    return u, i, df["label"].to_numpy(np.float32)


def fit(data: FitData, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int,
        label: str = "train") -> Trained:
    """Train DSER with BCE on positives + uniform negatives, Adam, fixed epochs."""
    torch.manual_seed(seed)
    model = DSER(data.inputs, model_cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                           lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history = []
    for epoch in range(train_cfg.epochs):
        u, i, y = (torch.from_numpy(a) for a in epoch_samples(data, train_cfg.negatives, seed, epoch))
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        model.train()
        total, batches = 0.0, range(0, len(y), train_cfg.batch_size)
        bar = tqdm(batches, desc=f"{label} epoch {epoch + 1}/{train_cfg.epochs}", unit="batch",
                   disable=not train_cfg.show_progress, leave=False)
        for start in bar:
            idx = order[start:start + train_cfg.batch_size]
            loss = loss_fn(model(u[idx], i[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / max(len(y), 1), "samples": int(len(y))})
        log.info("%s epoch %d/%d: loss %.4f", label, epoch + 1, train_cfg.epochs, history[-1]["loss"])
    return Trained(model.eval(), data.user_ids, data.item_ids, history)


def save_artifacts(trained: Trained, cfg: Config, directory: Path) -> None:
    """Write the model directory (local path) without pickle."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()},
              str(directory / "model.safetensors"))
    settings = cfg.to_dict()
    settings["model"] = dataclasses.asdict(trained.model.cfg)  # the model as built
    (directory / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    pd.DataFrame({"user_id": trained.user_ids.astype(np.int32),
                  "idx": np.arange(len(trained.user_ids), dtype=np.int32)}).to_parquet(directory / "user_index.parquet")
    pd.DataFrame({"item_id": trained.item_ids.astype(np.int32),
                  "idx": np.arange(len(trained.item_ids), dtype=np.int32)}).to_parquet(directory / "item_index.parquet")
    (directory / "history.json").write_text(json.dumps(trained.history, indent=1))


def load_artifacts(directory: Path) -> Trained:
    """Load a model directory written by ``save_artifacts``."""
    cfg = from_dict(yaml.safe_load((directory / "config.yaml").read_text()))
    state = load_file(str(directory / "model.safetensors"))
    user_ids = pd.read_parquet(directory / "user_index.parquet")["user_id"].to_numpy()
    item_ids = pd.read_parquet(directory / "item_index.parquet")["item_id"].to_numpy()
    history = json.loads((directory / "history.json").read_text())
    return Trained(from_state(state, cfg.model), user_ids, item_ids, history)


def model_bytes(directory: Path) -> dict[str, bytes]:
    """The files of a model directory as bytes (to broadcast to executors)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def load_from_bytes(files: dict[str, bytes]) -> Trained:
    """Rebuild a model from ``model_bytes`` output (on an executor)."""
    tmp = Path(tempfile.mkdtemp(prefix="dser-model-"))
    try:
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
        return load_artifacts(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
