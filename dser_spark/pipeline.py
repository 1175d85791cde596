"""Stage runners: read tables, call the library, write tables. Jobs call these."""
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

from dser_spark import embed, evaluate, prepare, recommend, sequences, tables
from dser_spark.config import Config
from dser_spark.model import Inputs
from dser_spark.train import FitData, Trained, fit, load_artifacts, model_bytes, save_artifacts

log = logging.getLogger("dser_spark")

EVAL, SERVE = "eval", "serve"
STAGES = ("prepare", "sequences", "embed", "train", "evaluate", "recommend")


def run_id(cfg: Config, dt: str) -> str:
    """Deterministic id of a run: the date and a hash of the config."""
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{dt}-{digest}"


def scopes(cfg: Config) -> list[str]:
    """Fits made per run: the evaluation model, and the serving refit on all data."""
    return [EVAL, SERVE] if cfg.publish.refit_all else [EVAL]


def serving_scope(cfg: Config) -> str:
    return SERVE if cfg.publish.refit_all else EVAL


def fit_positives(splits: DataFrame, scope: str) -> DataFrame:
    """Positives a fit of ``scope`` may see: all but test for eval, everything for serve."""
    return splits.filter(F.col("split") != sequences.TEST) if scope == EVAL else splits


# ---------------------------------------------------------------- prepare
def run_prepare(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Raw files -> interactions, items, rejected_rows, user_ids."""
    prepared = prepare.prepare(spark, cfg.data)
    for name in ("interactions", "items", "rejected_rows", "user_ids"):
        tables.write_table(spark, cfg, getattr(prepared, name), name)
    log.info("prepare: %s", prepared.summary)
    return prepared.summary


# -------------------------------------------------------------- sequences
def run_sequences(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """interactions -> sequences, splits, eval_candidates, train_samples."""
    interactions = tables.read_table(spark, cfg, "interactions")
    out = sequences.build(spark, cfg, interactions)
    for name in ("sequences", "splits", "eval_candidates", "train_samples"):
        tables.write_table(spark, cfg, getattr(out, name), name)
    splits = tables.read_table(spark, cfg, "splits")
    counts = {r["split"]: r["count"] for r in splits.groupBy("split").count().collect()}
    log.info("sequences: %s", counts)
    return counts


# ------------------------------------------------------------------ embed
def _ordered_sequences(pos: DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sorted user ids, each user's items in time order) collected for Doc2Vec."""
    seqs = sequences.build_sequences(pos).select("user_id", "item_ids").toPandas().sort_values("user_id")
    return seqs["user_id"].to_numpy(np.int64), [np.asarray(s, dtype=np.int64) for s in seqs["item_ids"]]


def _universe(spark: SparkSession, cfg: Config) -> np.ndarray:
    return sequences.item_universe(tables.read_table(spark, cfg, "interactions"))


def run_embed(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Doc2Vec per fit scope -> user_vectors, item_seq_vectors, user_recent_vectors;
    item content -> item_content_vectors."""
    splits = tables.read_table(spark, cfg, "splits")
    universe = _universe(spark, cfg)
    users_out, items_out, recent_out = [], [], []
    for scope in scopes(cfg):
        user_ids, seqs = _ordered_sequences(fit_positives(splits, scope))
        emb = embed.embed_sequences(user_ids, seqs, universe, cfg.embed, cfg.recent.k, cfg.seed)
        users_out.append(pd.DataFrame({"user_id": user_ids.astype(np.int32), "vector": list(emb.user_vectors),
                                       "scope": scope}))
        recent_out.append(pd.DataFrame({"user_id": user_ids.astype(np.int32), "vector": list(emb.recent_vectors),
                                        "scope": scope}))
        items_out.append(pd.DataFrame({"item_id": universe.astype(np.int32), "vector": list(emb.item_vectors),
                                       "out_vector": list(emb.item_out_vectors), "scope": scope}))
    items = (tables.read_table(spark, cfg, "items").toPandas()
             .set_index("item_id").reindex(universe).reset_index())
    content = embed.embed_content(items, cfg.embed, cfg.seed)
    frames = {
        "user_vectors": (pd.concat(users_out), "user_id int, vector array<float>, scope string"),
        "user_recent_vectors": (pd.concat(recent_out), "user_id int, vector array<float>, scope string"),
        "item_seq_vectors": (pd.concat(items_out),
                             "item_id int, vector array<float>, out_vector array<float>, scope string"),
        "item_content_vectors": (pd.DataFrame({"item_id": universe.astype(np.int32), "vector": list(content)}),
                                 "item_id int, vector array<float>"),
    }
    for name, (pdf, schema) in frames.items():
        tables.write_table(spark, cfg, _to_spark(spark, pdf, schema), name)
    return {"users": len(users_out[0]), "items": len(universe)}


def _to_spark(spark: SparkSession, pdf: pd.DataFrame, schema: str) -> DataFrame:
    """A driver-side pandas frame as a Spark DataFrame with an explicit schema."""
    for col in pdf.columns:
        if pdf[col].dtype == object and len(pdf) and isinstance(pdf[col].iloc[0], np.ndarray):
            pdf[col] = [v.astype(np.float32).tolist() for v in pdf[col]]
    return spark.createDataFrame(pdf, schema)


# ------------------------------------------------------------------ train
def _vectors(spark: SparkSession, cfg: Config, name: str, key: str, ids: np.ndarray, scope: str | None,
             column: str = "vector") -> torch.Tensor:
    """Vectors of table ``name`` aligned with ``ids`` (zeros where missing)."""
    df = tables.read_table(spark, cfg, name)
    if scope is not None:
        df = df.filter(F.col("scope") == scope)
    pdf = df.select(key, column).toPandas().set_index(key)
    dim = len(pdf[column].iloc[0])
    out = np.zeros((len(ids), dim), dtype=np.float32)
    pos = pd.Index(pdf.index).get_indexer(ids)
    found = pos >= 0
    out[found] = np.stack(pdf[column].to_numpy()[pos[found]])
    return torch.from_numpy(out)


def fit_data(spark: SparkSession, cfg: Config, scope: str) -> FitData:
    """Everything one fit needs, gathered from the tables on the driver."""
    pos = fit_positives(tables.read_table(spark, cfg, "splits"), scope)
    grouped = pos.groupBy("user_id").agg(F.collect_list("item_id").alias("items")).toPandas().sort_values("user_id")
    user_ids = grouped["user_id"].to_numpy(np.int64)
    item_ids = _universe(spark, cfg)
    inputs = Inputs(
        user_vectors=_vectors(spark, cfg, "user_vectors", "user_id", user_ids, scope),
        recent_vectors=_vectors(spark, cfg, "user_recent_vectors", "user_id", user_ids, scope),
        item_vectors=_vectors(spark, cfg, "item_seq_vectors", "item_id", item_ids, scope),
        item_out_vectors=_vectors(spark, cfg, "item_seq_vectors", "item_id", item_ids, scope, "out_vector"),
        content_vectors=_vectors(spark, cfg, "item_content_vectors", "item_id", item_ids, None),
    )
    return FitData(user_ids, item_ids, [np.asarray(s, dtype=np.int64) for s in grouped["items"]], inputs)


def model_name(cfg: Config, dt: str, scope: str) -> str:
    """Warehouse-relative directory of a model artifact."""
    return f"models/{run_id(cfg, dt)}/{scope}"


def run_train(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Fit DSER for each scope and store the artifacts under models/<run_id>/<scope>."""
    out = {}
    for scope in scopes(cfg):
        trained = fit(fit_data(spark, cfg, scope), cfg.model, cfg.train, cfg.seed, label=f"train[{scope}]")
        with tempfile.TemporaryDirectory() as tmp:
            save_artifacts(trained, cfg, Path(tmp) / "model")
            tables.put_directory(spark, cfg, str(Path(tmp) / "model"), model_name(cfg, dt, scope))
        out[scope] = trained.history[-1]["loss"] if trained.history else None
    return out


def load_model(spark: SparkSession, cfg: Config, dt: str, scope: str) -> tuple[Trained, dict[str, bytes]]:
    """A stored model and its raw files (for broadcasting)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = tables.get_directory(spark, cfg, model_name(cfg, dt, scope), str(Path(tmp) / "model"))
        return load_artifacts(Path(local)), model_bytes(Path(local))


# --------------------------------------------------------------- evaluate
def run_evaluate(spark: SparkSession, cfg: Config, dt: str) -> pd.DataFrame:
    """Sampled-protocol HR/NDCG for DSER and ItemPop -> metrics."""
    rid = run_id(cfg, dt)
    candidates = (tables.read_table(spark, cfg, "eval_candidates")
                  .filter(F.col("split") == sequences.TEST).toPandas())
    trained, _ = load_model(spark, cfg, dt, EVAL)
    pop = (fit_positives(tables.read_table(spark, cfg, "splits"), EVAL)
           .groupBy("item_id").count().toPandas().set_index("item_id")["count"])
    ks = sorted({5, 10, 20, cfg.evaluate.k})
    rows = pd.concat([
        evaluate.metric_rows(rid, "DSER", "sampled", evaluate.sampled_metrics(evaluate.model_scorer(trained), candidates, ks)),
        evaluate.metric_rows(rid, "ItemPop", "sampled", evaluate.sampled_metrics(evaluate.popularity_scorer(pop), candidates, ks)),
    ], ignore_index=True)
    new = spark.createDataFrame(rows, evaluate.METRICS_SCHEMA)
    try:
        old = tables.read_table(spark, cfg, "metrics").filter(F.col("run_id") != rid)
        new = old.unionByName(new).localCheckpoint()
    except FileNotFoundError:
        pass
    tables.write_table(spark, cfg, new, "metrics")
    return rows


# -------------------------------------------------------------- recommend
def run_recommend(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Top-K for every user from the serving model, published as partition ``dt``."""
    rid = run_id(cfg, dt)
    interactions = tables.read_table(spark, cfg, "interactions")
    trained, files = load_model(spark, cfg, dt, serving_scope(cfg))
    users = interactions.select("user_id").distinct()
    recs = (recommend.recommend_all(spark, files, rid, users, interactions, cfg.recommend.k,
                                    cfg.recommend.user_block, cfg.recommend.exclude_seen)
            .withColumn("model_run_id", F.lit(rid)))
    n_users = users.count()
    checks = [lambda df: check_recommendations(df, interactions if cfg.recommend.exclude_seen else None,
                                               n_users, cfg.recommend.k)]
    location = tables.publish_partition(spark, cfg, recs, "recommendations", dt, checks)
    tables.register_view(
        spark, cfg, "recommendations_titled",
        f"SELECT r.*, i.title FROM {cfg.warehouse.database}.recommendations r "
        f"LEFT JOIN {cfg.warehouse.database}.items i ON r.item_id = i.item_id")
    return {"users": n_users, "location": location}


def check_recommendations(df: DataFrame, interactions: DataFrame | None, n_users: int, k: int) -> None:
    """Validate a staged recommendations partition; raise ValueError if wrong."""
    per_user = df.groupBy("user_id").agg(F.count("*").alias("n"), F.max("rank").alias("max_rank"),
                                         F.countDistinct("rank").alias("ranks"))
    stats = per_user.agg(F.count("*").alias("users"),
                         F.sum(F.when((F.col("n") != F.col("max_rank")) | (F.col("ranks") != F.col("n"))
                                      | (F.col("n") > k), 1).otherwise(0)).alias("bad")).first()
    if stats["users"] != n_users:
        raise tables.ValidationError(f"recommendations cover {stats['users']} users, expected {n_users}")
    if stats["bad"]:
        raise tables.ValidationError(f"{stats['bad']} users have non-contiguous or too many ranks")
    if interactions is not None:
        seen = df.join(interactions.select("user_id", "item_id"), ["user_id", "item_id"]).limit(1).count()
        if seen:
            raise tables.ValidationError("recommendations contain items the user already interacted with")


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
