"""The model lifecycle: ids that outlive serving changes, manifests, the latest pointer, retention.

A model is identified by what shapes it: a fingerprint of the data it was fit
on and the config keys that affect training (``TRAINING_KEYS``). Serving,
publishing, display and Spark keys never change the id, so ``recommend`` can
run with other settings, on another night, against the same model.

Layout under ``<warehouse>/models/``::

    <model_id>/eval/, <model_id>/serve/   the fits (``artifacts``)
    <model_id>/manifest.json              id, trained_at, fingerprint, config, metrics, published dts
    <model_id>/report/                    the evaluation report
    _latest                               {"model_id": ...}: the newest complete model, written last

A model directory is staged and swapped in whole; ``_latest`` is replaced in
one step only after that, so it never names an incomplete model.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from dser_spark import tables
from dser_spark.artifacts import Trained, model_bytes, save_artifacts
from dser_spark.config import Config

log = logging.getLogger("dser_spark")

ROOT = "models"
LATEST = f"{ROOT}/_latest"
MANIFEST = "manifest.json"

# sections and keys that shape a trained model; everything else (evaluate, recommend, publish,
# spark, warehouse) and the keys below in UNSHAPING do not
TRAINING_KEYS = ("seed", "data", "implicit", "split", "embed", "recent", "model", "train")
UNSHAPING = {"data": ("max_reject_fraction",),
             "train": ("show_progress", "checkpoint_dir", "sample_table_epochs", "reuse_model")}


class ModelNotFound(FileNotFoundError):
    """No model to serve: none named, none trained for the date, none complete."""


def training_settings(cfg: Config) -> dict:
    """The part of ``cfg`` that shapes a trained model."""
    full = cfg.to_dict()
    out = {key: full[key] for key in TRAINING_KEYS}
    for section, keys in UNSHAPING.items():
        out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def data_fingerprint(spark: SparkSession, cfg: Config) -> dict:
    """Row counts, newest timestamp and an order-free content hash of the tables a fit reads.

    ``sequences`` carries every positive (with its split marks) and ``items``
    the content documents; the hash is the XOR of per-row xxhash64 values.
    """
    seqs = tables.read_table(spark, cfg, "sequences")
    items = tables.read_table(spark, cfg, "items")
    s = seqs.agg(F.count(F.lit(1)).alias("users"), F.sum(F.size("item_ids")).alias("positives"),
                 F.max(F.array_max("ts")).alias("max_ts"),
                 F.bit_xor(F.xxhash64(*seqs.columns)).alias("hash")).first()
    i = items.agg(F.count(F.lit(1)).alias("items"), F.bit_xor(F.xxhash64(*items.columns)).alias("hash")).first()
    return {"users": s["users"], "positives": int(s["positives"] or 0),
            "max_ts": s["max_ts"].isoformat() if s["max_ts"] else None,
            "sequences_hash": f"{(s['hash'] or 0) & (2 ** 64 - 1):016x}", "items": i["items"],
            "items_hash": f"{(i['hash'] or 0) & (2 ** 64 - 1):016x}"}


def model_id(cfg: Config, fingerprint: dict) -> str:
    """``dser-<hash>`` of the data fingerprint and the training settings."""
    blob = json.dumps({"data": fingerprint, "settings": training_settings(cfg)}, sort_keys=True)
    return "dser-" + hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class Resolved:
    """The model ``recommend`` uses for a date, and why."""

    model_id: str
    reason: str


def manifest(spark: SparkSession, cfg: Config, mid: str) -> dict | None:
    """The manifest of model ``mid`` (None if there is no complete model of that id)."""
    return tables.read_json(spark, cfg, f"{ROOT}/{mid}/{MANIFEST}")


def update_manifest(spark: SparkSession, cfg: Config, mid: str, **changes) -> dict:
    """Merge ``changes`` into the manifest of ``mid`` (replaced in one step)."""
    current = manifest(spark, cfg, mid)
    if current is None:
        raise ModelNotFound(f"model {mid} not found under {tables.root_uri(cfg)}/{ROOT}")
    current.update(changes)
    tables.write_json(spark, cfg, f"{ROOT}/{mid}/{MANIFEST}", current)
    return current


def model_ids(spark: SparkSession, cfg: Config) -> list[str]:
    """Ids of every complete model (its manifest written), oldest first by training time."""
    fs, root = tables.filesystem(spark, cfg), f"{tables.root_uri(cfg)}/{ROOT}"
    found = []
    for name in fs.list_dirs(root):
        if name.startswith("dser-") and fs.exists(f"{root}/{name}/{MANIFEST}"):
            found.append((manifest(spark, cfg, name)["trained_at"], name))
    return [name for _, name in sorted(found)]


def latest(spark: SparkSession, cfg: Config) -> str | None:
    """The model ``_latest`` points at, if any."""
    pointer = tables.read_json(spark, cfg, LATEST)
    return pointer["model_id"] if pointer else None


def store(spark: SparkSession, cfg: Config, mid: str, fits: dict[str, Trained], fingerprint: dict, dt: str) -> None:
    """Write model ``mid`` (its fits and manifest) as one directory, then point ``_latest`` at it.

    Refitting an existing id (``train.reuse_model: false``) keeps the dates its manifest lists.
    """
    before = manifest(spark, cfg, mid) or {}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / mid
        for scope, trained in fits.items():
            save_artifacts(trained, cfg, local / scope)
        (local / MANIFEST).write_text(json.dumps({
            "model_id": mid, "trained_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
            "trained_for": sorted({*before.get("trained_for", []), dt}), "fingerprint": fingerprint, "config": cfg.to_dict(), "scopes": sorted(fits),
            "epochs": fits[next(iter(fits))].best_epoch, "validation": validation_summary(fits),
            "test": {}, "published": before.get("published", [])}, indent=1, sort_keys=True, default=str))
        tables.put_directory(spark, cfg, str(local), f"{ROOT}/{mid}")
    set_latest(spark, cfg, mid)


def set_latest(spark: SparkSession, cfg: Config, mid: str) -> None:
    tables.write_json(spark, cfg, LATEST, {"model_id": mid})


def validation_summary(fits: dict[str, Trained]) -> dict:
    """The best validation HR of the selection curve kept in the fits' history."""
    values = [h["val_hr"] for t in fits.values() for h in t.history if h.get("val_hr") is not None]
    return {"best_val_hr": max(values)} if values else {}


def note_trained_for(spark: SparkSession, cfg: Config, mid: str, dt: str) -> None:
    """Record that the training run of ``dt`` produced (or found) model ``mid``; point ``_latest`` at it."""
    current = manifest(spark, cfg, mid)
    if dt not in current["trained_for"]:
        update_manifest(spark, cfg, mid, trained_for=sorted({*current["trained_for"], dt}))
    set_latest(spark, cfg, mid)


def resolve(spark: SparkSession, cfg: Config, dt: str, requested: str | None = None) -> Resolved:
    """The model to serve ``dt``: ``requested``; else the one trained for ``dt``; else ``_latest``."""
    if requested:
        if manifest(spark, cfg, requested) is None:
            known = ", ".join(model_ids(spark, cfg)) or "none"
            raise ModelNotFound(f"--model {requested}: no complete model of that id (models: {known})")
        return Resolved(requested, "named with --model")
    trained_for = [m for m in model_ids(spark, cfg) if dt in manifest(spark, cfg, m)["trained_for"]]
    if trained_for:
        return Resolved(trained_for[-1], f"trained for dt={dt}")
    newest = latest(spark, cfg)
    if newest is None or manifest(spark, cfg, newest) is None:
        raise ModelNotFound(f"no trained model under {tables.root_uri(cfg)}/{ROOT}: run `dser-spark train` "
                            f"(or the nightly) first")
    return Resolved(newest, f"none was trained for dt={dt}: the newest complete model ({LATEST})")


def files(spark: SparkSession, cfg: Config, mid: str, scope: str) -> dict[str, bytes]:
    """A stored fit's files (``artifacts.model_bytes``): what evaluate and recommend broadcast. The driver
    reads what it needs from them (``artifacts.stored_history``, ``stored_item_ids``) without building the
    model."""
    name = f"{ROOT}/{mid}/{scope}"
    if not tables.filesystem(spark, cfg).exists(f"{tables.root_uri(cfg)}/{name}"):
        raise ModelNotFound(f"model {mid} has no '{scope}' fit (it has {manifest(spark, cfg, mid)['scopes']})")
    with tempfile.TemporaryDirectory() as tmp:
        return model_bytes(Path(tables.get_directory(spark, cfg, name, str(Path(tmp) / "model"))))


def retain(spark: SparkSession, cfg: Config, published: dict[str, str]) -> list[str]:
    """Delete all but the newest ``publish.retain_models`` models; never one a retained partition
    (``published``: dt -> model id) or ``_latest`` points to. Returns the deleted ids."""
    ids = model_ids(spark, cfg)
    keep = set(ids[-cfg.publish.retain_models:]) | set(published.values()) | {latest(spark, cfg)}
    fs, deleted = tables.filesystem(spark, cfg), []
    for mid in ids:
        if mid not in keep:
            log.info("model retention: removing %s", mid)
            fs.delete(f"{tables.root_uri(cfg)}/{ROOT}/{mid}")
            deleted.append(mid)
    return deleted
