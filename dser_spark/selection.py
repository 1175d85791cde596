"""Choices made on the validation item, then refits: the honest protocol for every model.

Every fit sees one scope of the data (``sequences.SELECT`` = train only,
``EVAL`` = train + validation, ``SERVE`` = everything). DSER and its neural
baselines are fit on train only with early stopping on validation HR@k (best
weights kept), then refit on each later scope for the chosen number of
epochs. Spark ALS tries a grid of ranks and regularisations scored on
validation with a train-only fit, then refits the best on train + validation.
Without a validation split nothing is chosen: each scope is fit for
``train.epochs``.

This module reads no tables: the pipeline hands it a ``FitSource``.
"""
from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dser_spark import baselines, distributed, evaluate, sequence_model
from dser_spark.artifacts import Trained
from dser_spark.config import Config, ModelConfig, TrainConfig
from dser_spark.model import DSER, baseline_config
from dser_spark.recommend import popularity
from dser_spark.sequences import EVAL, SELECT, SERVE, VALIDATION
from dser_spark.train import FitData, fit

log = logging.getLogger("dser_spark")


class FitSource(Protocol):
    """What the selection needs from the warehouse, per scope."""

    def fit_data(self, scope: str) -> FitData:
        """Sequences and Doc2Vec inputs of one scope."""

    def recent_data(self, scope: str) -> FitData:
        """``fit_data`` with only each user's last positives (those the recent windows read)."""

    def positives(self, scope: str) -> DataFrame:
        """(user_id, item_id) positives of one scope, as a Spark DataFrame."""

    def candidates(self, split: str) -> pd.DataFrame:
        """The sampled evaluation candidates of ``validation`` or ``test``."""

    def table(self, name: str) -> DataFrame:
        """A warehouse table."""

    @property
    def universe(self) -> np.ndarray:
        """Sorted ids of every item with an interaction."""


def selecting(cfg: Config) -> bool:
    """Whether choices are made on a validation item (needs the validation split)."""
    return cfg.split.validation and cfg.train.select_epochs


def scopes(cfg: Config) -> list[str]:
    """Fits made per run: the selection fit (if selecting), the evaluation refit, and the serving refit."""
    out = [SELECT] if selecting(cfg) else []
    return out + ([EVAL, SERVE] if cfg.train.refit_all else [EVAL])


def serving_scope(cfg: Config) -> str:
    """The scope of the model ``recommend`` serves from."""
    return SERVE if cfg.train.refit_all else EVAL


def validator(data: FitData, cands: pd.DataFrame, train: TrainConfig):
    """Validation HR@k of a model fit on ``data`` (the early-stopping metric, ``train.validation_metric``):
    against the validation candidates' sampled negatives, or against every item outside the fit history."""
    k = train.validation_k

    def validate(model: DSER) -> float:
        trained = Trained(model, data.user_ids, data.item_ids)
        if train.validation_metric == "full":
            return evaluate.full_hit_ratio(trained, cands, data.user_pos, k)
        return evaluate.sampled_metrics(evaluate.model_scorer(trained), cands, [k])[("HR", k)]

    return validate


def fit_scope(cfg: Config, source: FitSource, model_cfg: ModelConfig, scope: str, label: str, validated: bool,
              epochs: int | None, checkpoint_dir: str) -> Trained:
    """One fit of ``scope`` (early-stopped on validation HR@k when ``validated``; ``epochs`` overrides
    ``train.epochs``): on the driver from ``source``, or with ``train.distributed`` by TorchDistributor
    processes that read the warehouse tables themselves."""
    if cfg.train.distributed:
        return distributed.fit(cfg, model_cfg, scope, label, validated, epochs)
    data = source.fit_data(scope)
    validate = validator(data, source.candidates(VALIDATION), cfg.train) if validated else None
    if model_cfg.encoder == "attention":
        return sequence_model.fit(data, model_cfg, cfg.train, cfg.seed, label=label, validate=validate,
                                  epochs=epochs)
    return fit(data, model_cfg, cfg.train, cfg.seed, label=label, validate=validate, epochs=epochs,
               checkpoint_dir=checkpoint_dir)


def select_and_refit(cfg: Config, source: FitSource, model_cfg: ModelConfig, name: str, refit_scopes: list[str],
                     checkpoints: str) -> tuple[dict[str, Trained], Trained | None]:
    """Choose the epochs of ``model_cfg`` on validation, then refit it on each of ``refit_scopes``.

    Returns the refits by scope and the selection fit (None without a
    validation split). ``checkpoints`` is the directory of this run's
    resumable checkpoints. The refits, independent once the epochs are
    chosen, may run side by side (``side_by_side``).
    """
    chosen, selected = cfg.train.epochs, None
    if selecting(cfg):
        selected = fit_scope(cfg, source, model_cfg, SELECT, f"{name}[select]", True, None,
                             str(Path(checkpoints) / f"{name}-select"))
        chosen = selected.best_epoch or 0
        log.info("%s: %d epochs chosen on validation (%s HR@%d %.4f)", name, chosen, cfg.train.validation_metric,
                 cfg.train.validation_k, max((h.get("val_hr", 0.0) for h in selected.history), default=0.0))
    def refit(scope: str, run_cfg: Config) -> Trained:
        return fit_scope(run_cfg, source, model_cfg, scope, f"{name}[{scope}]", False, chosen,
                         str(Path(checkpoints) / f"{name}-{scope}"))

    out = side_by_side(cfg, source, refit_scopes, refit)
    for scope in refit_scopes:
        out[scope].best_epoch = chosen
        if selected is not None:  # keep the selection curve with the refit's own losses
            out[scope].history = [dict(h, phase="select") for h in selected.history] + \
                [dict(h, phase="refit") for h in out[scope].history]
    return out, selected


# Driver memory a driver-path fit adds per positive of its scope, measured at 25M ratings (README: the whole
# nightly at scale, since 9b5db35): the driver went from ~3.1 GiB at the start of the train stage to 5.95 GiB
# with the eval and serve refits side by side, for ~24.9 M positives a scope. Counting the whole rise against
# one fit errs towards fewer fits at once.
FIT_BYTES_PER_POSITIVE = 120


def free_memory() -> int | None:
    """Bytes the driver may still allocate: the kernel's MemAvailable, capped by a cgroup v2 limit (a
    container's); None where unknown (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def fit_threads(cfg: Config) -> int:
    """The torch threads one fit on the driver uses: ``train.threads``, else torch's default (the machine's
    cores, whatever the Spark master: the same on a local and a cluster driver)."""
    return cfg.train.threads or torch.get_num_threads()


def refits_at_once(cfg: Config, scopes: int, threads: int) -> int:
    """How many of ``scopes`` refits share ``threads`` (``fit_threads``) at once, at least one thread each
    (1: one after another; always 1 for ``train.distributed``, whose fits are processes of their own)."""
    return 1 if cfg.train.distributed else max(1, min(scopes, threads))


def fits_in_memory(positives: int, free: int | None) -> int:
    """How many driver-path fits of ``positives`` positives ``free`` bytes hold at once (0 if unknown)."""
    return 0 if free is None else free // max(FIT_BYTES_PER_POSITIVE * positives, 1)


def side_by_side(cfg: Config, source: FitSource, scopes: list[str], refit: Callable[[str, Config], Trained]
                 ) -> dict[str, Trained]:
    """``refit(scope, cfg)`` of every scope: one after another, or as many at a time, in threads, as
    ``refits_at_once`` allows and the free memory holds (``fits_in_memory``).

    Side by side, the threads one fit would use (``fit_threads``) are divided
    among the fits: a small model's step uses two threads poorly, so two
    one-thread fits on two cores finish sooner than the same fits one after
    the other on two threads. Each fit is as reproducible as alone (its
    weights are built under ``model.seeded``, its data drawn from its own
    seeded generators); its numbers are those of a fit with that many threads.
    The scopes' data are read from the warehouse first, in this thread.
    """
    threads = fit_threads(cfg)
    fits = refits_at_once(cfg, len(scopes), threads)
    if fits > 1:
        positives = max(len(source.fit_data(scope).flat_items) for scope in scopes)
        free = free_memory()
        held = fits_in_memory(positives, free)
        if held < fits:
            log.info("refits: the free memory (%s) holds %d fit(s) of %d positives at once", "unknown" if free is None
                     else f"{free / 2**30:.1f} GiB", held, positives)
        fits = min(fits, held)
    if fits < 2:
        return {scope: refit(scope, cfg) for scope in scopes}
    threads //= fits
    run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    before = torch.get_num_threads()
    log.info("refits %s side by side, %d at a time, %d torch thread(s) each", ", ".join(scopes), fits, threads)
    try:
        with ThreadPoolExecutor(fits, thread_name_prefix="refit") as pool:
            futures = {scope: pool.submit(refit, scope, run_cfg) for scope in scopes}
            return {scope: f.result() for scope, f in futures.items()}
    finally:
        torch.set_num_threads(before)


def tune_als(cfg: Config, source: FitSource) -> baselines.Factors:
    """Spark ALS (implicit): the grid scored on validation HR@k with a train-only fit (on the executors, as
    the test is), the best refit on train + validation."""
    e, universe = cfg.evaluate, source.universe
    grid = [(r, g) for r in e.als_ranks for g in e.als_regs]
    best = grid[0]
    if selecting(cfg) and len(grid) > 1:
        val, k = source.table("eval_candidates").filter(F.col("split") == VALIDATION), cfg.train.validation_k
        pos = source.positives(SELECT).localCheckpoint()
        scores = {}
        for rank, reg in grid:
            f = baselines.fit_als(pos, universe, rank, reg, e.als_alpha, e.als_iter, cfg.seed, e.als_blocks)
            rows = evaluate.evaluate_models({"ALS": f}, val, None, universe, [k], e)
            scores[(rank, reg)] = float(rows.loc[rows["metric"] == "HR", "value"].iloc[0])
            log.info("ALS rank %d reg %g: validation HR@%d %.4f", rank, reg, k, scores[(rank, reg)])
        best = max(grid, key=lambda p: scores[p])
    return baselines.fit_als(source.positives(EVAL), universe, best[0], best[1], e.als_alpha, e.als_iter, cfg.seed,
                             e.als_blocks)


def baseline_training(cfg: Config, name: str) -> TrainConfig:
    """How a neural baseline trains: SASRec as the attention model does (``train``); GMF, MLP and NeuMF for
    ``evaluate.baseline_epochs``, and, beside an attention model, with the defaults of the pairwise losses."""
    if name == sequence_model.SASREC:
        return cfg.train if cfg.train.loss in ("softmax", "full_softmax") else \
            dataclasses.replace(cfg.train, loss="full_softmax", batch_size=128, epochs=cfg.evaluate.baseline_epochs)
    train = dataclasses.replace(cfg.train, epochs=cfg.evaluate.baseline_epochs)
    if cfg.model.encoder == "attention":
        d = TrainConfig()
        train = dataclasses.replace(train, loss=d.loss, batch_size=d.batch_size, negatives=d.negatives, lr=d.lr)
    return train


def baseline_model(cfg: Config, source: FitSource, name: str, checkpoints: str
                   ) -> tuple[evaluate.Model, list[dict] | None, str]:
    """(model to evaluate, training history, note) of one baseline on the eval scope, its choices made on
    validation."""
    if name == "ItemPop":
        counts = popularity(source.positives(EVAL)).counts_of(source.universe)
        return evaluate.FixedScores(counts.astype(np.float64)), None, ""
    if name == "ALS":
        f = tune_als(cfg, source)
        return f, None, ", ".join(f"{k} {v}" for k, v in f.params.items())
    bcfg = dataclasses.replace(cfg, train=baseline_training(cfg, name))  # stored with the model: it must load
    if name == "Recency":
        data = source.recent_data(EVAL)  # untrained: it reads only the recent windows
        model = DSER(data.inputs, baseline_config(cfg.model, "Recency")).eval()
        return (evaluate.KernelModel(evaluate.model_files(Trained(model, data.user_ids, data.item_ids), bcfg)),
                None, f"untrained, last {cfg.recent.k} items")
    model_cfg = sequence_model.baseline(cfg.model) if name == sequence_model.SASREC else \
        baseline_config(cfg.model, name)
    fitted, _ = select_and_refit(bcfg, source, model_cfg, name, [EVAL], checkpoints)
    return (evaluate.KernelModel(evaluate.model_files(fitted[EVAL], bcfg)), fitted[EVAL].history,
            f"epochs {fitted[EVAL].best_epoch}")
