"""A trained model and its artifacts: a directory of plain files, no pickle.

``model.safetensors`` (the state dict, incl. the frozen Doc2Vec inputs),
``config.yaml`` (the run's config, with the model section as built),
``user_index.parquet`` / ``item_index.parquet`` (dense index -> source id) and
``history.json`` (the training curve).
"""
from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from safetensors.torch import load_file, save_file

from dser_spark.config import Config, from_dict
from dser_spark.model import DSER, from_state


@dataclass
class Trained:
    """A trained model with its id indexes, its history, and the config it was trained with.

    Serving reads that config: new users' vectors are inferred with its Doc2Vec
    settings and seed, and their positives follow its ``implicit.min_rating``.
    """

    model: DSER
    user_ids: np.ndarray
    item_ids: np.ndarray
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    config: Config = field(default_factory=Config)



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
    if cfg.model.encoder == "attention":
        from dser_spark import sequence_model  # it builds on Trained: imported here, not at the top

        model = sequence_model.from_state(state, cfg.model)
    else:
        model = from_state(state, cfg.model)
    return Trained(model, user_ids, item_ids, history, chosen_epochs(history), cfg)


def chosen_epochs(history: list[dict]) -> int | None:
    """Epochs a stored model was trained for: its refit's, else its best (validated) epoch."""
    refit = [h for h in history if h.get("phase") == "refit"]
    if refit or any(h.get("phase") == "select" for h in history):
        return len(refit)
    best = [h["epoch"] for h in history if h.get("best")]
    return best[0] if best else (history[-1]["epoch"] if history else 0)


def model_bytes(directory: Path) -> dict[str, bytes]:
    """The files of a model directory as bytes (to broadcast to executors)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def stored_history(files: dict[str, bytes]) -> list[dict]:
    """The training curve of ``model_bytes`` output, without building the model."""
    return json.loads(files["history.json"])


def stored_config(files: dict[str, bytes]) -> Config:
    """The config of ``model_bytes`` output, without building the model."""
    return from_dict(yaml.safe_load(files["config.yaml"]))


def stored_item_ids(files: dict[str, bytes]) -> np.ndarray:
    """The item ids (by dense index) of ``model_bytes`` output, without building the model."""
    return pd.read_parquet(io.BytesIO(files["item_index.parquet"]))["item_id"].to_numpy()


def load_from_bytes(files: dict[str, bytes]) -> Trained:
    """Rebuild a model from ``model_bytes`` output (on an executor)."""
    tmp = Path(tempfile.mkdtemp(prefix="dser-model-"))
    try:
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
        return load_artifacts(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
