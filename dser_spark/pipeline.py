"""Stage runners: read tables, call the library, write tables. Jobs call these."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from dser_spark import baselines, embed, evaluate, prepare, recommend, report, sequences, tables
from dser_spark.config import Config, ModelConfig
from dser_spark.model import DSER, Inputs, baseline_config
from dser_spark.train import FitData, Trained, fit, load_artifacts, model_bytes, save_artifacts

log = logging.getLogger("dser_spark")

SELECT, EVAL, SERVE = "select", "eval", "serve"  # train only / train + validation / everything
STAGES = ("prepare", "sequences", "embed", "train", "evaluate", "recommend")


def run_id(cfg: Config, dt: str) -> str:
    """Deterministic id of a run: the date and a hash of the config."""
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{dt}-{digest}"


def scopes(cfg: Config) -> list[str]:
    """Fits made per run: the selection model (train only, choices made on the
    validation item), the evaluation refit (train + validation, scored once on
    test), and the serving refit on all data."""
    out = [SELECT] if selecting(cfg) else []
    return out + ([EVAL, SERVE] if cfg.publish.refit_all else [EVAL])


def selecting(cfg: Config) -> bool:
    """Whether choices are made on a validation item (needs the validation split)."""
    return cfg.split.validation and cfg.train.select_epochs


def serving_scope(cfg: Config) -> str:
    return SERVE if cfg.publish.refit_all else EVAL


def fit_positives(splits: DataFrame, scope: str) -> DataFrame:
    """Positives a fit of ``scope`` may see: train for select, all but test for eval,
    everything for serve."""
    if scope == SELECT:
        return splits.filter(F.col("split") == sequences.TRAIN)
    return splits.filter(F.col("split") != sequences.TEST) if scope == EVAL else splits


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
        log.info("embed[%s]: Doc2Vec over %d users", scope, len(user_ids))
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
    return {"users": len(users_out[-1]), "items": len(universe), "scopes": scopes(cfg)}


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


def recent_windows(cfg: Config) -> tuple[int, ...]:
    """The model's recent windows: the main ``recent.k`` first, then the extra ones."""
    out = [cfg.recent.k]
    for k in cfg.recent.windows:
        if k not in out:
            out.append(k)
    return tuple(out)


def fit_data(spark: SparkSession, cfg: Config, scope: str) -> FitData:
    """Everything one fit needs, gathered from the tables on the driver.

    Positives come in time order (the sequences' order), so the recent windows
    and the next-item training contexts see only what came before.
    """
    user_ids, seqs = _ordered_sequences(fit_positives(tables.read_table(spark, cfg, "splits"), scope))
    item_ids = _universe(spark, cfg)
    inputs = Inputs(
        user_vectors=_vectors(spark, cfg, "user_vectors", "user_id", user_ids, scope),
        recent_vectors=_vectors(spark, cfg, "user_recent_vectors", "user_id", user_ids, scope),
        item_vectors=_vectors(spark, cfg, "item_seq_vectors", "item_id", item_ids, scope),
        item_out_vectors=_vectors(spark, cfg, "item_seq_vectors", "item_id", item_ids, scope, "out_vector"),
        content_vectors=_vectors(spark, cfg, "item_content_vectors", "item_id", item_ids, None),
    )
    return FitData(user_ids, item_ids, seqs, inputs, recent_windows(cfg))


def candidates(spark: SparkSession, cfg: Config, split: str) -> pd.DataFrame:
    """eval_candidates rows of one split (validation or test) on the driver."""
    return (tables.read_table(spark, cfg, "eval_candidates").filter(F.col("split") == split)
            .toPandas().sort_values("user_id").reset_index(drop=True))


def validator(trained_ids: tuple[np.ndarray, np.ndarray], cands: pd.DataFrame, k: int):
    """Validation HR@k of a model on the validation candidates (the early-stopping metric)."""
    user_ids, item_ids = trained_ids

    def validate(model: DSER) -> float:
        scorer = evaluate.model_scorer(Trained(model, user_ids, item_ids))
        return evaluate.sampled_metrics(scorer, cands, [k])[("HR", k)]

    return validate


def checkpoint_dir(cfg: Config, dt: str, label: str) -> str:
    """Local directory of a fit's resumable checkpoints (stable for a run id)."""
    root = cfg.train.checkpoint_dir or str(Path(tempfile.gettempdir()) / "dser-spark-checkpoints")
    return str(Path(root) / run_id(cfg, dt) / label)


def select_and_refit(spark: SparkSession, cfg: Config, dt: str, model_cfg: ModelConfig, name: str,
                     refit_scopes: list[str], data: dict[str, FitData] | None = None
                     ) -> tuple[dict[str, Trained], Trained | None]:
    """The honest protocol for one model variant.

    Fit on train only with early stopping on validation HR@k (best weights
    kept), then refit on each of ``refit_scopes`` for the chosen number of
    epochs. Without a validation split, fit each scope for ``train.epochs``.
    """
    data = {} if data is None else data

    def get(scope: str) -> FitData:
        if scope not in data:
            data[scope] = fit_data(spark, cfg, scope)
        return data[scope]

    chosen, selected = cfg.train.epochs, None
    if selecting(cfg):
        sel = get(SELECT)
        validate = validator((sel.user_ids, sel.item_ids), candidates(spark, cfg, sequences.VALIDATION),
                             cfg.evaluate.k)
        selected = fit(sel, model_cfg, cfg.train, cfg.seed, label=f"{name}[select]", validate=validate,
                       checkpoint_dir=checkpoint_dir(cfg, dt, f"{name}-select"))
        chosen = selected.best_epoch or 0
        log.info("%s: %d epochs chosen on validation (HR@%d %.4f)", name, chosen, cfg.evaluate.k,
                 max((h.get("val_hr", 0.0) for h in selected.history), default=0.0))
    out = {}
    for scope in refit_scopes:
        out[scope] = fit(get(scope), model_cfg, cfg.train, cfg.seed, label=f"{name}[{scope}]", epochs=chosen,
                         checkpoint_dir=checkpoint_dir(cfg, dt, f"{name}-{scope}"))
        out[scope].best_epoch = chosen
        if selected is not None:  # keep the selection curve with the refit's own losses
            out[scope].history = [dict(h, phase="select") for h in selected.history] + \
                [dict(h, phase="refit") for h in out[scope].history]
    return out, selected


def model_name(cfg: Config, dt: str, scope: str) -> str:
    """Warehouse-relative directory of a model artifact."""
    return f"models/{run_id(cfg, dt)}/{scope}"


def run_train(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Fit DSER: choose epochs on validation, refit per scope, store models/<run_id>/<scope>."""
    refits = [sc for sc in scopes(cfg) if sc != SELECT]
    trained, selected = select_and_refit(spark, cfg, dt, cfg.model, "DSER", refits)
    if selected is not None:
        trained[SELECT] = selected
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
    rid = run_id(cfg, dt)
    test = candidates(spark, cfg, sequences.TEST)
    ks = sorted(set(cfg.evaluate.ks) | {cfg.evaluate.k})
    trained, _ = load_model(spark, cfg, dt, EVAL)
    data = {EVAL: fit_data(spark, cfg, EVAL)}
    item_ids = data[EVAL].item_ids
    hist = dict(zip(data[EVAL].user_ids.tolist(), data[EVAL].user_pos))
    users = test["user_id"].to_numpy(np.int64)
    history = [hist.get(int(u), np.empty(0, np.int64)) for u in users]
    rankers: dict[str, evaluate.Ranker] = {"DSER": evaluate.model_ranker(trained)}
    histories: dict[str, list[dict]] = {"DSER": trained.history}
    notes: dict[str, str] = {"DSER": f"epochs {trained.best_epoch}"}
    for name in cfg.evaluate.baselines:
        started = time.time()
        if name == "ItemPop":
            pop = pd.Series(np.concatenate(data[EVAL].user_pos)).value_counts()
            rankers[name] = evaluate.popularity_ranker(pop, item_ids)
        elif name == "Recency":
            model = DSER(data[EVAL].inputs, baseline_config(cfg.model, "Recency")).eval()
            rankers[name] = evaluate.model_ranker(Trained(model, data[EVAL].user_ids, item_ids))
            notes[name] = f"untrained, last {cfg.recent.k} items"
        elif name == "ALS":
            factors = tune_als(spark, cfg, item_ids)
            rankers[name] = evaluate.dense_ranker(factors.user_ids, factors.user_factors, factors.item_factors)
            notes[name] = ", ".join(f"{k} {v}" for k, v in factors.params.items())
        else:
            bcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=cfg.evaluate.baseline_epochs))
            fitted, _ = select_and_refit(spark, bcfg, dt, baseline_config(cfg.model, name), name, [EVAL], data)
            rankers[name] = evaluate.model_ranker(fitted[EVAL])
            histories[name] = fitted[EVAL].history
            notes[name] = f"epochs {fitted[EVAL].best_epoch}"
        log.info("evaluate: baseline %s ready in %.0fs", name, time.time() - started)
    frames = []
    for name, ranker in rankers.items():
        started = time.time()
        sampled = evaluate.sampled_metrics(evaluate.ranker_scorer(ranker, item_ids), test, ks)
        frames.append(evaluate.metric_rows(rid, name, "sampled", sampled))
        if cfg.evaluate.full_ranking:
            full = evaluate.full_metrics(ranker, item_ids, users, test["item_id"].to_numpy(np.int64), history, ks,
                                         coverage_k=cfg.evaluate.coverage_k)
            frames.append(evaluate.metric_rows(rid, name, "full", full))
        log.info("evaluate: %s HR@%d %.4f (%.0fs)", name, cfg.evaluate.k, sampled[("HR", cfg.evaluate.k)],
                 time.time() - started)
    rows = pd.concat(frames, ignore_index=True)
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


def tune_als(spark: SparkSession, cfg: Config, item_ids: np.ndarray) -> baselines.Factors:
    """Spark ALS (implicit): grid on validation HR@k with a train-only fit, refit on train + validation."""
    splits = tables.read_table(spark, cfg, "splits")
    grid = [(r, g) for r in cfg.evaluate.als_ranks for g in cfg.evaluate.als_regs]
    best = grid[0]
    if selecting(cfg) and len(grid) > 1:
        val = candidates(spark, cfg, sequences.VALIDATION)
        pos = fit_positives(splits, SELECT).select("user_id", "item_id").localCheckpoint()
        scores = {}
        for rank, reg in grid:
            f = baselines.fit_als(pos, item_ids, rank, reg, cfg.evaluate.als_alpha, cfg.evaluate.als_iter, cfg.seed)
            scorer = evaluate.ranker_scorer(evaluate.dense_ranker(f.user_ids, f.user_factors, f.item_factors),
                                            item_ids)
            scores[(rank, reg)] = evaluate.sampled_metrics(scorer, val, [cfg.evaluate.k])[("HR", cfg.evaluate.k)]
            log.info("ALS rank %d reg %g: validation HR@%d %.4f", rank, reg, cfg.evaluate.k, scores[(rank, reg)])
        best = max(grid, key=lambda p: scores[p])
    return baselines.fit_als(fit_positives(splits, EVAL), item_ids, best[0], best[1], cfg.evaluate.als_alpha,
                             cfg.evaluate.als_iter, cfg.seed)


# -------------------------------------------------------------- recommend
def run_recommend(spark: SparkSession, cfg: Config, dt: str) -> dict:
    """Top-K for the configured users from the serving model, published as partition ``dt``.

    Also (re)points the catalog views ``recommendations_titled`` (with item
    titles) and ``recommendations_latest`` (the newest published ``dt``).
    """
    rid, rc, db = run_id(cfg, dt), cfg.recommend, cfg.warehouse.database
    interactions = tables.read_table(spark, cfg, "interactions")
    trained, files = load_model(spark, cfg, dt, serving_scope(cfg))
    users = recommend.id_list(spark, cfg, rc.users, rc.user_ids, "user_id")
    items = recommend.candidate_items(spark, cfg, trained.item_ids)
    recs = (recommend.recommend_all(spark, files, interactions, recommend.Settings.from_config(cfg), users, items)
            .withColumn("model_run_id", F.lit(rid)))
    targets = interactions.select("user_id").distinct() if users is None else users
    candidates = spark.createDataFrame(
        pd.DataFrame({"item_id": (trained.item_ids if items is None else items).astype(np.int32)}))
    checks = [lambda df: check_recommendations(df, targets, candidates, interactions, rc.k, rc.exclude_seen)]
    location = tables.publish_partition(spark, cfg, recs, "recommendations", dt, checks)
    tables.register_view(spark, cfg, "recommendations_titled",
                         f"SELECT r.user_id, r.rank, r.item_id, i.title, r.score, r.source, r.model_run_id, r.dt "
                         f"FROM {db}.recommendations r LEFT JOIN {db}.items i ON r.item_id = i.item_id")
    latest = tables.partitions(spark, cfg, "recommendations")[-1]
    tables.register_view(spark, cfg, "recommendations_latest",
                         f"SELECT * FROM {db}.recommendations_titled WHERE dt = '{latest}'")
    by_source = (spark.read.parquet(location).groupBy("source")
                 .agg(F.countDistinct("user_id").alias("users")).collect())
    sources = {r["source"]: r["users"] for r in by_source}
    log.info("recommend: users per source %s, published at %s", sources, location)
    return {"users": sum(sources.values()), "sources": sources, "location": location}


def check_recommendations(df: DataFrame, targets: DataFrame, candidates: DataFrame, interactions: DataFrame,
                          k: int, exclude_seen: bool) -> None:
    """Validate a staged recommendations partition; raise ValidationError naming what is wrong.

    Each target user has exactly min(k, candidates left) rows, where the
    candidates left are the candidate items minus (when excluded) the user's
    own; ranks run 1..n with scores never rising; only target users, only
    candidate items and (when excluded) none the user interacted with.
    """
    own = interactions.select("user_id", "item_id").distinct().join(F.broadcast(candidates), "item_id")
    n_items = candidates.count()
    left = F.lit(n_items) - (F.coalesce(F.col("own"), F.lit(0)) if exclude_seen else F.lit(0))
    want = (targets.select("user_id").distinct()
            .join(own.groupBy("user_id").agg(F.count("*").alias("own")), "user_id", "left")
            .select("user_id", F.least(F.lit(k), left).alias("want")))
    by_rank = Window.partitionBy("user_id").orderBy("rank")
    got = (df.withColumn("rising", (F.col("score") > F.lag("score").over(by_rank)).cast("int"))
           .groupBy("user_id").agg(F.count("*").alias("n"), F.min("rank").alias("lo"), F.max("rank").alias("hi"),
                                   F.countDistinct("rank").alias("ranks"), F.max("rising").alias("rising")))
    n, w = F.col("n"), F.col("want")
    problems = {
        "users without recommendations": n.isNull() & (w > 0),
        "users not asked for": w.isNull(),
        "users with a wrong number of rows (expected min(k, candidates left))": n.isNotNull() & (n != w),
        "users whose ranks are not 1..n": (F.col("lo") != 1) | (F.col("hi") != n) | (F.col("ranks") != n),
        "users whose scores rise with rank": F.col("rising") == 1,
    }
    counts = want.join(got, "user_id", "full").agg(
        *[F.sum(F.when(cond, 1).otherwise(0)).alias(f"p{i}") for i, cond in enumerate(problems.values())]).first()
    found = [f"{counts[f'p{i}']} {text}" for i, text in enumerate(problems) if counts[f"p{i}"]]
    outside = df.join(F.broadcast(candidates), "item_id", "left_anti").count()
    if outside:
        found.append(f"{outside} rows with items outside the candidates")
    if exclude_seen:
        seen = df.join(interactions.select("user_id", "item_id"), ["user_id", "item_id"], "left_semi").count()
        if seen:
            found.append(f"{seen} rows with items the user already interacted with")
    if found:
        raise tables.ValidationError("recommendations not published: " + "; ".join(found))


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
