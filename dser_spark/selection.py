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
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from dser_spark import baselines, evaluate
from dser_spark.artifacts import Trained
from dser_spark.config import Config, ModelConfig
from dser_spark.model import DSER, baseline_config
from dser_spark.sequences import EVAL, SELECT, SERVE, VALIDATION
from dser_spark.train import FitData, fit

log = logging.getLogger("dser_spark")


class FitSource(Protocol):
    """What the selection needs from the warehouse, per scope."""

    def fit_data(self, scope: str) -> FitData:
        """Sequences and Doc2Vec inputs of one scope."""

    def positives(self, scope: str) -> DataFrame:
        """(user_id, item_id) positives of one scope, as a Spark DataFrame."""

    def candidates(self, split: str) -> pd.DataFrame:
        """The sampled evaluation candidates of ``validation`` or ``test``."""


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


def validator(trained_ids: tuple[np.ndarray, np.ndarray], cands: pd.DataFrame, k: int):
    """Validation HR@k of a model on the validation candidates (the early-stopping metric)."""
    user_ids, item_ids = trained_ids

    def validate(model: DSER) -> float:
        scorer = evaluate.model_scorer(Trained(model, user_ids, item_ids))
        return evaluate.sampled_metrics(scorer, cands, [k])[("HR", k)]

    return validate


def select_and_refit(cfg: Config, source: FitSource, model_cfg: ModelConfig, name: str, refit_scopes: list[str],
                     checkpoints: str) -> tuple[dict[str, Trained], Trained | None]:
    """Choose the epochs of ``model_cfg`` on validation, then refit it on each of ``refit_scopes``.

    Returns the refits by scope and the selection fit (None without a
    validation split). ``checkpoints`` is the directory of this run's
    resumable checkpoints.
    """
    chosen, selected = cfg.train.epochs, None
    if selecting(cfg):
        sel = source.fit_data(SELECT)
        k = cfg.train.validation_k
        validate = validator((sel.user_ids, sel.item_ids), source.candidates(VALIDATION), k)
        selected = fit(sel, model_cfg, cfg.train, cfg.seed, label=f"{name}[select]", validate=validate,
                       checkpoint_dir=str(Path(checkpoints) / f"{name}-select"))
        chosen = selected.best_epoch or 0
        log.info("%s: %d epochs chosen on validation (HR@%d %.4f)", name, chosen, k,
                 max((h.get("val_hr", 0.0) for h in selected.history), default=0.0))
    out = {}
    for scope in refit_scopes:
        out[scope] = fit(source.fit_data(scope), model_cfg, cfg.train, cfg.seed, label=f"{name}[{scope}]",
                         epochs=chosen, checkpoint_dir=str(Path(checkpoints) / f"{name}-{scope}"))
        out[scope].best_epoch = chosen
        if selected is not None:  # keep the selection curve with the refit's own losses
            out[scope].history = [dict(h, phase="select") for h in selected.history] + \
                [dict(h, phase="refit") for h in out[scope].history]
    return out, selected


def tune_als(cfg: Config, source: FitSource, item_ids: np.ndarray) -> baselines.Factors:
    """Spark ALS (implicit): the grid scored on validation HR@k with a train-only fit, the best refit on
    train + validation."""
    e = cfg.evaluate
    grid = [(r, g) for r in e.als_ranks for g in e.als_regs]
    best = grid[0]
    if selecting(cfg) and len(grid) > 1:
        val, k = source.candidates(VALIDATION), cfg.train.validation_k
        pos = source.positives(SELECT).localCheckpoint()
        scores = {}
        for rank, reg in grid:
            f = baselines.fit_als(pos, item_ids, rank, reg, e.als_alpha, e.als_iter, cfg.seed)
            scorer = evaluate.ranker_scorer(evaluate.dense_ranker(f.user_ids, f.user_factors, f.item_factors),
                                            item_ids)
            scores[(rank, reg)] = evaluate.sampled_metrics(scorer, val, [k])[("HR", k)]
            log.info("ALS rank %d reg %g: validation HR@%d %.4f", rank, reg, k, scores[(rank, reg)])
        best = max(grid, key=lambda p: scores[p])
    return baselines.fit_als(source.positives(EVAL), item_ids, best[0], best[1], e.als_alpha, e.als_iter, cfg.seed)


def baseline_ranker(cfg: Config, source: FitSource, name: str, checkpoints: str
                    ) -> tuple[evaluate.Ranker, list[dict] | None, str]:
    """(ranker, training history, note) of one baseline on the eval scope, its choices made on validation."""
    data = source.fit_data(EVAL)
    if name == "ItemPop":
        pop = pd.Series(np.concatenate(data.user_pos)).value_counts()
        return evaluate.popularity_ranker(pop, data.item_ids), None, ""
    if name == "Recency":
        model = DSER(data.inputs, baseline_config(cfg.model, "Recency")).eval()
        return (evaluate.model_ranker(Trained(model, data.user_ids, data.item_ids)), None,
                f"untrained, last {cfg.recent.k} items")
    if name == "ALS":
        f = tune_als(cfg, source, data.item_ids)
        return (evaluate.dense_ranker(f.user_ids, f.user_factors, f.item_factors), None,
                ", ".join(f"{k} {v}" for k, v in f.params.items()))
    bcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=cfg.evaluate.baseline_epochs))
    fitted, _ = select_and_refit(bcfg, source, baseline_config(cfg.model, name), name, [EVAL], checkpoints)
    return evaluate.model_ranker(fitted[EVAL]), fitted[EVAL].history, f"epochs {fitted[EVAL].best_epoch}"
