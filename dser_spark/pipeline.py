"""Stage runners: read tables, call the library, write tables. Jobs and the CLI call these."""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dser_spark import embed, evaluate, prepare, publish, recommend, report, selection, sequences, tables
from dser_spark.artifacts import Trained, load_artifacts, model_bytes, save_artifacts
from dser_spark.config import Config
from dser_spark.model import Inputs
from dser_spark.sequences import EVAL, SELECT, TEST
from dser_spark.train import FitData

log = logging.getLogger("dser_spark")

STAGES = ("prepare", "sequences", "embed", "train", "evaluate", "recommend")


def run_id(cfg: Config, dt: str) -> str:
    """Deterministic id of a run: the date and a hash of the config."""
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{dt}-{digest}"


def model_name(cfg: Config, dt: str, scope: str) -> str:
    """Warehouse-relative directory of a model artifact."""
    return f"models/{run_id(cfg, dt)}/{scope}"


def checkpoints(cfg: Config, dt: str) -> str:
    """Local directory of this run's resumable training checkpoints."""
    root = cfg.train.checkpoint_dir or str(Path(tempfile.gettempdir()) / "dser-spark-checkpoints")
    return str(Path(root) / run_id(cfg, dt))


class WarehouseData:
    """The warehouse tables a fit reads, gathered on the driver once per stage.

    The ``sequences`` table is collected once and every scope is cut from it;
    the Doc2Vec vectors are read per scope. Implements ``selection.FitSource``.
    """

    def __init__(self, spark: SparkSession, cfg: Config):
        self.spark, self.cfg = spark, cfg
        self._sequences: pd.DataFrame | None = None
        self._universe: np.ndarray | None = None
        self._fits: dict[str, FitData] = {}

    def table(self, name: str) -> DataFrame:
        return tables.read_table(self.spark, self.cfg, name)

    @property
    def universe(self) -> np.ndarray:
        """Sorted ids of every item with an interaction."""
        if self._universe is None:
            self._universe = sequences.item_universe(self.table("interactions"))
        return self._universe

    def scope_sequences(self, scope: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """(sorted user ids, each one's items in time order) of ``scope``."""
        if self._sequences is None:
            self._sequences = self.table("sequences").select("user_id", "item_ids", "has_validation",
                                                             "has_test").toPandas()
        return sequences.scope_sequences(self._sequences, scope)

    def fit_data(self, scope: str) -> FitData:
        """Everything one fit of ``scope`` needs; positives in time order, so the recent windows and the
        next-item training contexts see only what came before."""
        if scope not in self._fits:
            user_ids, seqs = self.scope_sequences(scope)
            item_ids = self.universe
            inputs = Inputs(
                user_vectors=self._vectors("user_vectors", "user_id", user_ids, scope),
                recent_vectors=None,
                item_vectors=self._vectors("item_seq_vectors", "item_id", item_ids, scope),
                item_out_vectors=self._vectors("item_seq_vectors", "item_id", item_ids, scope, "out_vector"),
                content_vectors=self._vectors("item_content_vectors", "item_id", item_ids, None),
            )
            self._fits[scope] = FitData(user_ids, item_ids, seqs, inputs, self.cfg.recent.window_sizes())
        return self._fits[scope]

    def positives(self, scope: str) -> DataFrame:
        return sequences.scope_positives(self.table("splits"), scope).select("user_id", "item_id")

    def candidates(self, split: str) -> pd.DataFrame:
        return (self.table("eval_candidates").filter(F.col("split") == split)
                .toPandas().sort_values("user_id").reset_index(drop=True))

    def _vectors(self, name: str, key: str, ids: np.ndarray, scope: str | None,
                 column: str = "vector") -> torch.Tensor:
        """Vectors of table ``name`` aligned with ``ids`` (zeros where missing)."""
        df = self.table(name)
        if scope is not None:
            df = df.filter(F.col("scope") == scope)
        pdf = df.select(key, column).toPandas().set_index(key)
        dim = len(pdf[column].iloc[0])
        out = np.zeros((len(ids), dim), dtype=np.float32)
        pos = pd.Index(pdf.index).get_indexer(ids)
        found = pos >= 0
        out[found] = np.stack(pdf[column].to_numpy()[pos[found]])
        return torch.from_numpy(out)


# ---------------------------------------------------------------- prepare
def run_prepare(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Raw files -> interactions, items, rejected_rows."""
    prepared = prepare.prepare(spark, cfg.data)
    for name in ("interactions", "items", "rejected_rows"):
        tables.write_table(spark, cfg, getattr(prepared, name), name)
    prepared.unpersist()
    log.info("prepare: %s", prepared.summary)
    return prepared.summary


# -------------------------------------------------------------- sequences
def run_sequences(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """interactions -> sequences, splits, eval_candidates (and train_samples when asked for)."""
    out = sequences.build(spark, cfg, tables.read_table(spark, cfg, "interactions"))
    for name in ("sequences", "splits", "eval_candidates"):
        tables.write_table(spark, cfg, getattr(out, name), name)
    if out.train_samples is not None:
        tables.write_table(spark, cfg, out.train_samples, "train_samples")
    else:  # never leave samples of another run's settings behind
        tables.drop_table(spark, cfg, "train_samples")
    splits = tables.read_table(spark, cfg, "splits")
    counts = {r["split"]: r["count"] for r in splits.groupBy("split").count().collect()}
    log.info("sequences: %s", counts)
    return counts


# ------------------------------------------------------------------ embed
def run_embed(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Doc2Vec per fit scope -> user_vectors, item_seq_vectors; item content -> item_content_vectors."""
    data = WarehouseData(spark, cfg)
    universe = data.universe
    users_out, items_out = [], []
    for scope in selection.scopes(cfg):
        user_ids, seqs = data.scope_sequences(scope)
        log.info("embed[%s]: Doc2Vec over %d users", scope, len(user_ids))
        emb = embed.embed_sequences(user_ids, seqs, universe, cfg.embed, cfg.seed)
        users_out.append(pd.DataFrame({"user_id": user_ids.astype(np.int32), "vector": list(emb.user_vectors),
                                       "scope": scope}))
        items_out.append(pd.DataFrame({"item_id": universe.astype(np.int32), "vector": list(emb.item_vectors),
                                       "out_vector": list(emb.item_out_vectors), "scope": scope}))
    items = data.table("items").toPandas().set_index("item_id").reindex(universe).reset_index()
    content = embed.embed_content(items, cfg.embed, cfg.seed)
    frames = {
        "user_vectors": (pd.concat(users_out), "user_id int, vector array<float>, scope string"),
        "item_seq_vectors": (pd.concat(items_out),
                             "item_id int, vector array<float>, out_vector array<float>, scope string"),
        "item_content_vectors": (pd.DataFrame({"item_id": universe.astype(np.int32), "vector": list(content)}),
                                 "item_id int, vector array<float>"),
    }
    for name, (pdf, schema) in frames.items():
        tables.write_table(spark, cfg, _to_spark(spark, pdf, schema), name)
    return {"users": len(users_out[-1]), "items": len(universe), "scopes": selection.scopes(cfg)}


def _to_spark(spark: SparkSession, pdf: pd.DataFrame, schema: str) -> DataFrame:
    """A driver-side pandas frame as a Spark DataFrame with an explicit schema."""
    for col in pdf.columns:
        if pdf[col].dtype == object and len(pdf) and isinstance(pdf[col].iloc[0], np.ndarray):
            pdf[col] = [v.astype(np.float32).tolist() for v in pdf[col]]
    return spark.createDataFrame(pdf, schema)


# ------------------------------------------------------------------ train
def run_train(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Fit DSER: choose epochs on validation, refit per scope, store models/<run_id>/<scope> (eval, serve).

    The selection fit is not stored: its curve travels in the refits' history.
    """
    refits = [sc for sc in selection.scopes(cfg) if sc != SELECT]
    trained, _ = selection.select_and_refit(cfg, WarehouseData(spark, cfg), cfg.model, "DSER", refits,
                                            checkpoints(cfg, dt))
    out = {}
    for scope, model in trained.items():
        with tempfile.TemporaryDirectory() as tmp:
            save_artifacts(model, cfg, Path(tmp) / "model")
            tables.put_directory(spark, cfg, str(Path(tmp) / "model"), model_name(cfg, dt, scope))
        losses = [h["loss"] for h in model.history if h.get("loss") is not None]
        out[scope] = losses[-1] if losses else None
    out["epochs"] = trained[EVAL].best_epoch
    return out


def load_model(spark: SparkSession, cfg: Config, dt: str, scope: str) -> tuple[Trained, dict[str, bytes]]:
    """A stored model and its raw files (for broadcasting)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = tables.get_directory(spark, cfg, model_name(cfg, dt, scope), str(Path(tmp) / "model"))
        return load_artifacts(Path(local)), model_bytes(Path(local))


# --------------------------------------------------------------- evaluate
def run_evaluate(spark: SparkSession, cfg: Config, dt: str) -> pd.DataFrame:
    """DSER and baselines on the test item, sampled and full ranking -> metrics; report.

    Every model is fit on train + validation (the ``eval`` scope) with its
    choices made on the validation item, and scored once on test. Returns the
    sampled-protocol rows (what the nightly summary prints).
    """
    rid, data = run_id(cfg, dt), WarehouseData(spark, cfg)
    trained, _ = load_model(spark, cfg, dt, EVAL)
    rankers = {"DSER": evaluate.model_ranker(trained)}
    histories, notes = {"DSER": trained.history}, {"DSER": f"epochs {trained.best_epoch}"}
    for name in cfg.evaluate.baselines:
        started = time.time()
        rankers[name], history, notes[name] = selection.baseline_ranker(cfg, data, name, checkpoints(cfg, dt))
        if history is not None:
            histories[name] = history
        log.info("evaluate: baseline %s ready in %.0fs", name, time.time() - started)
    fit = data.fit_data(EVAL)
    rows = evaluate.evaluate_rankers(rid, rankers, data.candidates(TEST), fit.item_ids,
                                     dict(zip(fit.user_ids.tolist(), fit.user_pos)),
                                     sorted(set(cfg.evaluate.ks) | {cfg.evaluate.k}), cfg.evaluate.full_ranking,
                                     cfg.evaluate.coverage_k, cfg.evaluate.k)
    new = spark.createDataFrame(rows, evaluate.METRICS_SCHEMA)
    try:
        old = tables.read_table(spark, cfg, "metrics").filter(F.col("run_id") != rid)
        new = old.unionByName(new).localCheckpoint()
    except FileNotFoundError:
        pass
    tables.write_table(spark, cfg, new, "metrics")
    if cfg.evaluate.report:
        with tempfile.TemporaryDirectory() as tmp:
            report.write_report(Path(tmp) / "report", rid, rows, histories, notes, cfg)
            tables.put_directory(spark, cfg, str(Path(tmp) / "report"), f"models/{rid}/report")
    return rows[rows["protocol"] == "sampled"].reset_index(drop=True)


# -------------------------------------------------------------- recommend
def run_recommend(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Top-K for the configured users from the serving model, published as partition ``dt``."""
    rc = cfg.recommend
    interactions = tables.read_table(spark, cfg, "interactions")
    trained, files = load_model(spark, cfg, dt, selection.serving_scope(cfg))
    users = recommend.id_list(spark, cfg, rc.users, rc.user_ids, "user_id")
    items = recommend.candidate_items(spark, cfg, trained.item_ids)
    recs = (recommend.recommend_all(spark, files, interactions, rc, users, items)
            .withColumn("model_run_id", F.lit(run_id(cfg, dt))))
    targets = interactions.select("user_id").distinct() if users is None else users
    location = publish.publish_recommendations(spark, cfg, recs, dt, targets,
                                               trained.item_ids if items is None else items, interactions)
    by_source = (spark.read.parquet(location).groupBy("source")
                 .agg(F.countDistinct("user_id").alias("users")).collect())
    sources = {r["source"]: r["users"] for r in by_source}
    log.info("recommend: users per source %s, published at %s", sources, location)
    return {"users": sum(sources.values()), "sources": sources, "location": location}


# ---------------------------------------------------------------- nightly
RUNNERS = {"prepare": run_prepare, "sequences": run_sequences, "embed": run_embed,
           "train": run_train, "evaluate": run_evaluate, "recommend": run_recommend}


def run_stage(spark: SparkSession, cfg: Config, stage: str, dt: str):
    """Run one stage with timing."""
    started = time.time()
    log.info("stage %s: start (dt=%s)", stage, dt)
    result = RUNNERS[stage](spark, cfg, dt)
    log.info("stage %s: done in %.1fs", stage, time.time() - started)
    return result


def run_nightly(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """All stages in order; returns what the summary prints."""
    started = time.time()
    results = {stage: run_stage(spark, cfg, stage, dt) for stage in STAGES}
    return {"results": results, "seconds": time.time() - started, "run_id": run_id(cfg, dt)}
