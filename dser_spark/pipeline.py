"""Stage runners: read tables, call the library, write tables. Jobs and the CLI call these."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dser_spark import embed, evaluate, models, prepare, publish, recommend, report, runs, selection, sequences, tables
from dser_spark.config import Config, from_dict
from dser_spark.model import Inputs
from dser_spark.sequences import EVAL, SELECT, TEST
from dser_spark.train import FitData

log = logging.getLogger("dser_spark")

STAGES = ("prepare", "sequences", "embed", "train", "evaluate", "recommend")


@dataclass(frozen=True)
class Options:
    """Command-line choices of a run besides the config."""

    model: str | None = None       # --model: serve / evaluate this model id
    force: bool = False            # --force: publish even if the quality gate refuses
    from_stage: str = "prepare"    # --from-stage: the nightly's first stage


def checkpoints(cfg: Config, mid: str) -> str:
    """Local directory of the resumable training checkpoints of model ``mid``."""
    root = cfg.train.checkpoint_dir or str(Path(tempfile.gettempdir()) / "dser-spark-checkpoints")
    return str(Path(root) / mid)


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
def run_prepare(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> dict:
    """Raw files -> interactions, items, rejected_rows."""
    prepared = prepare.prepare(spark, cfg)
    for name in ("interactions", "items", "rejected_rows"):
        tables.write_table(spark, cfg, getattr(prepared, name), name)
    prepared.unpersist()
    log.info("prepare: %s", prepared.summary)
    _note(rejected_rows=prepared.summary["rejected_total"], rejected=prepared.summary["rejected"])
    return prepared.summary


# -------------------------------------------------------------- sequences
def run_sequences(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> dict:
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
def run_embed(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> dict:
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
def run_train(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> dict:
    """Fit DSER (epochs chosen on validation, then the refits) and store it as model ``dser-<hash>``.

    The id hashes the data fingerprint and the training keys: a model already
    trained on the same data with the same settings is reused, not refit.
    """
    fingerprint = models.data_fingerprint(spark, cfg)
    mid = models.model_id(cfg, fingerprint)
    _note(model_id=mid, fingerprint=fingerprint)
    if cfg.train.reuse_model and models.manifest(spark, cfg, mid) is not None:
        log.info("train: model %s is already trained on these data with these settings: reused", mid)
        models.note_trained_for(spark, cfg, mid, dt)
        return {"model_id": mid, "reused": True}
    refits = [sc for sc in selection.scopes(cfg) if sc != SELECT]
    fits, _ = selection.select_and_refit(cfg, WarehouseData(spark, cfg), cfg.model, "DSER", refits,
                                         checkpoints(cfg, mid))
    models.store(spark, cfg, mid, fits, fingerprint, dt)
    log.info("train: stored model %s (%s), now models/_latest", mid, ", ".join(fits))
    return {"model_id": mid, "epochs": fits[EVAL].best_epoch}


def _note(**details) -> None:
    """Add details (model used, rejected rows, ...) to the running stage's record."""
    record = tables.ACTIVITY.get()
    if record is not None:
        record.details.update(details)


def resolve_model(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> str:
    """The model this stage uses (``--model``, else trained for ``dt``, else ``_latest``), logged with why."""
    found = models.resolve(spark, cfg, dt, opts.model)
    log.info("using model %s (%s)", found.model_id, found.reason)
    _note(model_id=found.model_id, model_reason=found.reason)
    return found.model_id


# --------------------------------------------------------------- evaluate
def run_evaluate(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> pd.DataFrame:
    """DSER and baselines on the test item, sampled and full ranking -> metrics; report; manifest.

    Every model is fit on train + validation (the ``eval`` scope) with its
    choices made on the validation item, and scored once on test. Returns the
    sampled-protocol rows (what the nightly summary prints).
    """
    mid, data = resolve_model(spark, cfg, dt, opts), WarehouseData(spark, cfg)
    trained, _ = models.load(spark, cfg, mid, EVAL)
    rankers = {"DSER": evaluate.model_ranker(trained)}
    histories, notes = {"DSER": trained.history}, {"DSER": f"epochs {trained.best_epoch}"}
    for name in cfg.evaluate.baselines:
        started = time.time()
        rankers[name], history, notes[name] = selection.baseline_ranker(cfg, data, name, checkpoints(cfg, mid))
        if history is not None:
            histories[name] = history
        log.info("evaluate: baseline %s ready in %.0fs", name, time.time() - started)
    fit = data.fit_data(EVAL)
    rows = evaluate.evaluate_rankers(rankers, data.candidates(TEST), fit.item_ids,
                                     dict(zip(fit.user_ids.tolist(), fit.user_pos)),
                                     sorted(set(cfg.evaluate.ks) | {cfg.evaluate.k}), cfg.evaluate.full_ranking,
                                     cfg.evaluate.coverage_k, cfg.evaluate.k)
    rows.insert(0, "model_id", mid)
    rows.insert(0, "dt", dt)
    rows.insert(0, "run_id", runs.run_id(cfg, dt))
    write_metrics(spark, cfg, rows, dt, mid)
    dser = rows[rows["model"] == "DSER"]
    models.update_manifest(spark, cfg, mid, evaluated_for=dt, test={
        f"{p} {m}@{k}" if m != "MRR" else f"{p} MRR": v
        for p, m, k, v in zip(dser["protocol"], dser["metric"], dser["k"], dser["value"])})
    if cfg.evaluate.report:
        with tempfile.TemporaryDirectory() as tmp:
            report.write_report(Path(tmp) / "report", mid, rows, histories, notes, cfg)
            tables.put_directory(spark, cfg, str(Path(tmp) / "report"), f"{models.ROOT}/{mid}/report")
    return rows[rows["protocol"] == "sampled"].reset_index(drop=True)


def write_metrics(spark: SparkSession, cfg: Config, rows: pd.DataFrame, dt: str, mid: str) -> None:
    """Replace the ``metrics`` rows of (dt, model) and keep every other night's; (re)point the history view."""
    new = spark.createDataFrame(rows, evaluate.METRICS_SCHEMA)
    try:
        old = tables.read_table(spark, cfg, "metrics")
        if "model_id" in old.columns:  # rows of earlier nights; a table of the old layout is replaced
            new = old.filter((F.col("dt") != dt) | (F.col("model_id") != mid)).unionByName(new).localCheckpoint()
    except FileNotFoundError:
        pass
    tables.write_table(spark, cfg, new, "metrics")
    k, db = cfg.evaluate.k, cfg.warehouse.database

    def pick(protocol: str, metric: str) -> str:
        return f"max(CASE WHEN protocol = '{protocol}' AND metric = '{metric}' AND k = {k} THEN value END)"

    tables.register_view(spark, cfg, "metrics_history",
                         f"SELECT dt, model_id, model, {pick('sampled', 'HR')} AS hr_{k}, "
                         f"{pick('sampled', 'NDCG')} AS ndcg_{k}, {pick('full', 'Recall')} AS full_recall_{k}, "
                         f"{pick('full', 'NDCG')} AS full_ndcg_{k} FROM {db}.metrics "
                         f"GROUP BY dt, model_id, model")


# -------------------------------------------------------------- recommend
def run_recommend(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> dict:
    """Top-K for the configured users from the chosen model, through the quality gate, published as ``dt``.

    The model is the one named, else trained for ``dt``, else the newest;
    tonight's interactions give every user's history and short-term state.
    """
    rc = cfg.recommend
    publish.check_backfill(spark, cfg, dt)
    mid = resolve_model(spark, cfg, dt, opts)
    decision = publish.quality_gate(spark, cfg, mid, opts.force)
    log.info("%s", decision)
    _note(quality_gate=decision)
    trained, files = models.load(spark, cfg, mid, selection.serving_scope(trained_config(spark, cfg, mid)))
    interactions = tables.read_table(spark, cfg, "interactions")
    users = recommend.id_list(spark, cfg, rc.users, rc.user_ids, "user_id")
    items = recommend.candidate_items(spark, cfg, trained.item_ids)
    recs = recommend.recommend_all(spark, files, interactions, rc, users, items).withColumn("model_run_id",
                                                                                            F.lit(mid))
    targets = interactions.select("user_id").distinct() if users is None else users
    location = publish.publish_recommendations(spark, cfg, recs, dt, targets,
                                               trained.item_ids if items is None else items, interactions)
    published = models.manifest(spark, cfg, mid)["published"]
    models.update_manifest(spark, cfg, mid, published=sorted({*published, dt}))
    models.retain(spark, cfg, publish.published_models(spark, cfg))
    by_source = (spark.read.parquet(location).groupBy("source")
                 .agg(F.countDistinct("user_id").alias("users")).collect())
    sources = {r["source"]: r["users"] for r in by_source}
    log.info("recommend: users per source %s, published at %s", sources, location)
    return {"users": sum(sources.values()), "sources": sources, "location": location, "model_id": mid}


def trained_config(spark: SparkSession, cfg: Config, mid: str) -> Config:
    """The config model ``mid`` was trained with (its manifest's)."""
    return from_dict(models.manifest(spark, cfg, mid)["config"])


# ---------------------------------------------------------------- nightly
RUNNERS = {"prepare": run_prepare, "sequences": run_sequences, "embed": run_embed,
           "train": run_train, "evaluate": run_evaluate, "recommend": run_recommend}


def run_stage(spark: SparkSession, cfg: Config, stage: str, dt: str, opts: Options | None = None):
    """Run one stage with timing, inside its run record."""
    started = time.time()
    log.info("stage %s: start (dt=%s)", stage, dt)
    with runs.recorded(spark, cfg, stage, dt):
        result = RUNNERS[stage](spark, cfg, dt, opts or Options())
    log.info("stage %s: done in %.1fs", stage, time.time() - started)
    return result


def run_nightly(spark: SparkSession, cfg: Config, dt: str, opts: Options | None = None) -> dict:
    """The stages in order (from ``opts.from_stage``); returns what the summary prints.

    A ``dt`` that retention would delete is refused before any work; with
    ``from_stage`` the earlier stages' outputs must be there already.
    """
    opts = opts or Options()
    publish.check_backfill(spark, cfg, dt)
    todo = STAGES[STAGES.index(opts.from_stage):]
    for stage in STAGES[:STAGES.index(opts.from_stage)]:
        check_outputs(spark, cfg, stage)
    started = time.time()
    results = {stage: run_stage(spark, cfg, stage, dt, opts) for stage in todo}
    return {"results": results, "seconds": time.time() - started, "run_id": runs.run_id(cfg, dt),
            "records": f"{tables.root_uri(cfg)}/{runs.ROOT}/{runs.run_id(cfg, dt)}/"}


OUTPUTS = {"prepare": ("interactions", "items", "rejected_rows"),
           "sequences": ("sequences", "splits", "eval_candidates"),
           "embed": ("user_vectors", "item_seq_vectors", "item_content_vectors"),
           "train": (), "evaluate": ("metrics",)}


def check_outputs(spark: SparkSession, cfg: Config, stage: str) -> None:
    """FileNotFoundError naming the first missing output of a stage that ``--from-stage`` skips."""
    for name in OUTPUTS[stage]:
        if not tables.filesystem(spark, cfg).exists(tables.table_uri(cfg, name)):
            raise FileNotFoundError(f"--from-stage skips '{stage}', but its table '{name}' is not at "
                                    f"{tables.table_uri(cfg, name)}: start from '{stage}' or earlier")
    if stage == "train" and models.latest(spark, cfg) is None:
        raise FileNotFoundError("--from-stage skips 'train', but no model is trained yet: start from 'train'")
