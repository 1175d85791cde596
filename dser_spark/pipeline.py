"""Stage runners: read tables, call the library, write tables. Jobs and the CLI call these."""
from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dser_spark import (embed, evaluate, models, prepare, publish, recommend, report, runs, selection,
                        sequences, tables)
from dser_spark.artifacts import chosen_epochs, stored_history, stored_item_ids
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
    """The warehouse tables a fit reads, gathered on the driver.

    Tables are collected at most once per version per process (``tables.collect``):
    every scope is cut from the one ``sequences`` frame; each scope's vectors
    are collected once, as Arrow. Implements ``selection.FitSource``.
    """

    def __init__(self, spark: SparkSession, cfg: Config):
        self.spark, self.cfg = spark, cfg
        self._universe: np.ndarray | None = None
        self._fits: dict[str, FitData] = {}

    def table(self, name: str) -> DataFrame:
        return tables.read_table(self.spark, self.cfg, name)

    @property
    def universe(self) -> np.ndarray:
        """Sorted ids of every item with an interaction."""
        if self._universe is None:
            self._universe = tables.derived(self.spark, self.cfg, "interactions", "item universe",
                                            sequences.item_universe)
        return self._universe

    def scope_sequences(self, scope: str) -> tuple[np.ndarray, list[np.ndarray]]:
        """(sorted user ids, each one's items in time order) of ``scope``."""
        frame = tables.collect(self.spark, self.cfg, "sequences", ["user_id", "item_ids", "has_validation",
                                                                  "has_test"])
        return sequences.scope_sequences(frame, scope)

    def fit_data(self, scope: str) -> FitData:
        """Everything one fit of ``scope`` needs; positives in time order, so the recent windows and the
        next-item training contexts see only what came before."""
        if scope not in self._fits:
            user_ids, seqs = self.scope_sequences(scope)
            self._fits[scope] = FitData(user_ids, self.universe, seqs, self._inputs(scope, user_ids),
                                        self.cfg.recent.window_sizes())
        return self._fits[scope]

    def recent_data(self, scope: str) -> FitData:
        """``fit_data(scope)`` with only each user's last positives, those the recent windows read: all an
        untrained model (the Recency baseline) needs, without every positive on the driver."""
        windows = self.cfg.recent.window_sizes()
        last = max(windows, default=0) + 2  # + the held-out items a scope drops
        frame = tables.derived(self.spark, self.cfg, "sequences", f"last {last} items", lambda df: df.select(
            "user_id", F.expr(f"slice(item_ids, greatest(size(item_ids) - {last - 1}, 1), {last})").alias("item_ids"),
            "has_validation", "has_test").toPandas())
        user_ids, seqs = sequences.scope_sequences(frame, scope)
        return FitData(user_ids, self.universe, seqs, self._inputs(scope, user_ids), windows)

    def _inputs(self, scope: str, user_ids: np.ndarray) -> Inputs:
        """The Doc2Vec inputs of a fit of ``scope`` over ``user_ids`` and the universe."""
        item_ids = self.universe
        return Inputs(
            user_vectors=self._vectors("user_vectors", "user_id", user_ids, scope),
            recent_vectors=None,
            item_vectors=self._vectors("item_seq_vectors", "item_id", item_ids, scope),
            item_out_vectors=self._vectors("item_seq_vectors", "item_id", item_ids, scope, "out_vector"),
            content_vectors=self._vectors("item_content_vectors", "item_id", item_ids, None),
        )

    def positives(self, scope: str) -> DataFrame:
        return sequences.scope_positives(self.table("splits"), scope).select("user_id", "item_id")

    def candidates(self, split: str) -> pd.DataFrame:
        return (self.table("eval_candidates").filter(F.col("split") == split)
                .toPandas().sort_values("user_id").reset_index(drop=True))

    def _vectors(self, name: str, key: str, ids: np.ndarray, scope: str | None,
                 column: str = "vector") -> torch.Tensor:
        """Vectors of table ``name`` (rows of ``scope``, if given) aligned with ``ids`` (zeros where missing).
        Each scope's rows are collected once per table version, as Arrow (flat floats, not an object a row)."""
        columns = [key, "vector"] + (["out_vector"] if name == "item_seq_vectors" else [])

        def rows(df: DataFrame):
            return (df if scope is None else df.filter(F.col("scope") == scope)).select(*columns).toArrow()

        table = tables.derived(self.spark, self.cfg, name, f"arrow {','.join(columns)} of scope {scope}", rows)
        return torch.from_numpy(tables.aligned_rows(table, key, column, ids, f"table '{name}' (scope {scope!r})"))


# ---------------------------------------------------------------- prepare
def run_prepare(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> dict:
    """Raw files -> interactions, items, rejected_rows."""
    with runs.step(spark, "read and check the source files"):
        prepared = prepare.prepare(spark, cfg)
    for name in ("interactions", "items", "rejected_rows"):
        _write(spark, cfg, getattr(prepared, name), name)
    for name, frame in prepared.id_maps.items():  # last: the tables above were numbered from last night's maps
        _write(spark, cfg, frame, name)
    prepared.unpersist()
    log.info("prepare: %s", prepared.summary)
    _note(rejected_rows=prepared.summary["rejected_total"], rejected=prepared.summary["rejected"])
    return prepared.summary


# -------------------------------------------------------------- sequences
def run_sequences(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> dict:
    """interactions -> sequences, splits, eval_candidates (and train_samples when asked for)."""
    out = sequences.build(spark, cfg, tables.read_table(spark, cfg, "interactions"))
    for name in ("sequences", "splits", "eval_candidates"):
        _write(spark, cfg, getattr(out, name), name)
    if out.train_samples is not None:
        _write(spark, cfg, out.train_samples, "train_samples")
    else:  # never leave samples of another run's settings behind
        tables.drop_table(spark, cfg, "train_samples")
    splits = tables.read_table(spark, cfg, "splits")
    counts = {r["split"]: r["count"] for r in splits.groupBy("split").count().collect()}
    log.info("sequences: %s", counts)
    return counts


# ------------------------------------------------------------------ embed
def run_embed(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> dict:
    """Doc2Vec per fit scope -> user_vectors, item_seq_vectors; item content -> item_content_vectors.

    On the driver (the default) or in executors (``embed.on_executor``): the same vectors either way.
    """
    data = WarehouseData(spark, cfg)
    universe, scopes = data.universe, selection.scopes(cfg)
    place = _embed_on_executors if cfg.embed.on_executor else _embed_on_driver
    with runs.step(spark, "doc2vec"):
        rows, content = place(spark, cfg, data, universe, scopes)
    for name, df in _vector_tables(rows, content).items():
        _write(spark, cfg, df, name)
    rows.unpersist(), content.unpersist()
    return {"users": tables.row_count(spark, cfg, "sequences"), "items": len(universe), "scopes": scopes}


def _embed_on_driver(spark: SparkSession, cfg: Config, data: WarehouseData, universe: np.ndarray,
                     scopes: list[str]) -> tuple[DataFrame, DataFrame]:
    """(``embed.SEQUENCE_ROWS``, ``embed.CONTENT_ROWS``) from fits on the driver, all at once."""
    items = data.table("items").toPandas().set_index("item_id").reindex(universe).reset_index()
    fits, content = embed.embed_all({scope: data.scope_sequences(scope) for scope in scopes}, items, universe,
                                    cfg.embed, cfg.seed)
    rows = pd.concat([embed.sequence_rows(scope, fit) for scope, fit in fits.items()])
    content_rows = pd.DataFrame({"item_id": universe.astype(np.int32), "vector": list(content)})
    return _to_spark(spark, rows, embed.SEQUENCE_ROWS), _to_spark(spark, content_rows, embed.CONTENT_ROWS)


def _embed_on_executors(spark: SparkSession, cfg: Config, data: WarehouseData, universe: np.ndarray,
                        scopes: list[str]) -> tuple[DataFrame, DataFrame]:
    """As ``_embed_on_driver``, each fit in one executor's Python worker; cached for the three writes."""
    rows = embed.sequences_on_executors(data.table("sequences"), scopes, universe, cfg.embed, cfg.seed)
    content = embed.content_on_executor(data.table("items"), universe, cfg.embed, cfg.seed)
    rows, content = rows.persist(), content.persist()
    with ThreadPoolExecutor(2, thread_name_prefix="doc2vec") as pool:  # both jobs at once on a cluster
        list(pool.map(lambda df: df.count(), [rows, content]))
    return rows, content


def _vector_tables(rows: DataFrame, content: DataFrame) -> dict[str, DataFrame]:
    """The three vector tables from ``embed.SEQUENCE_ROWS`` and ``embed.CONTENT_ROWS``."""
    users, items = rows.filter(F.col("kind") == "user"), rows.filter(F.col("kind") == "item")
    return {
        "user_vectors": users.select(F.col("id").alias("user_id"), "vector", "scope"),
        "item_seq_vectors": items.select(F.col("id").alias("item_id"), "vector", "out_vector", "scope"),
        "item_content_vectors": content,
    }


def _write(spark: SparkSession, cfg: Config, df: DataFrame, name: str) -> None:
    """``tables.write_table`` as a step of the running stage."""
    with runs.step(spark, f"write {name}"):
        tables.write_table(spark, cfg, df, name)


def _to_spark(spark: SparkSession, pdf: pd.DataFrame, schema: str) -> DataFrame:
    """A driver-side pandas frame as a Spark DataFrame with an explicit schema."""
    for col in pdf.columns:
        if pdf[col].dtype == object and any(isinstance(v, np.ndarray) for v in pdf[col]):
            pdf[col] = [v.astype(np.float32).tolist() if isinstance(v, np.ndarray) else v for v in pdf[col]]
    return spark.createDataFrame(pdf, schema)


# ------------------------------------------------------------------ train
def run_train(spark: SparkSession, cfg: Config, dt: str, opts: Options) -> dict:
    """Fit DSER (epochs chosen on validation, then the refits) and store it as model ``dser-<hash>``.

    The id hashes the data fingerprint and the training keys: a model already
    trained on the same data with the same settings is reused, not refit.
    """
    with runs.step(spark, "data fingerprint"):
        fingerprint = models.data_fingerprint(spark, cfg)
    mid = models.model_id(cfg, fingerprint)
    _note(model_id=mid, fingerprint=fingerprint)
    if cfg.train.reuse_model and models.manifest(spark, cfg, mid) is not None:
        log.info("train: model %s is already trained on these data with these settings: reused", mid)
        models.note_trained_for(spark, cfg, mid, dt)
        return {"model_id": mid, "reused": True}
    refits = [sc for sc in selection.scopes(cfg) if sc != SELECT]
    with runs.step(spark, f"fits: select, {', '.join(refits)}"):
        fits, _ = selection.select_and_refit(cfg, WarehouseData(spark, cfg), cfg.model, "DSER", refits,
                                             checkpoints(cfg, mid))
    with runs.step(spark, "store the model"):
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
    e, mid, data = cfg.evaluate, resolve_model(spark, cfg, dt, opts), WarehouseData(spark, cfg)
    files = models.files(spark, cfg, mid, EVAL)
    shipped: dict[str, evaluate.Model] = {"DSER": evaluate.KernelModel(files)}
    history = stored_history(files)
    histories, notes = {"DSER": history}, {"DSER": f"epochs {chosen_epochs(history)}"}
    for name in e.baselines:
        started = time.time()
        with runs.step(spark, f"baseline {name}"):
            shipped[name], history, notes[name] = selection.baseline_model(cfg, data, name, checkpoints(cfg, mid))
        if history is not None:
            histories[name] = history
        log.info("evaluate: baseline %s ready in %.0fs", name, time.time() - started)
    with runs.step(spark, f"score {len(shipped)} models"):
        rows = evaluate.evaluate_models(shipped, data.table("eval_candidates").filter(F.col("split") == TEST),
                                        data.positives(EVAL) if e.full_ranking else None, data.universe,
                                        sorted(set(e.ks) | {e.k}), e)
    for name, hr in rows[(rows["metric"] == "HR") & (rows["k"] == e.k)][["model", "value"]].to_numpy():
        log.info("evaluate: %s HR@%d %.4f", name, e.k, hr)
    rows.insert(0, "model_id", mid)
    rows.insert(0, "dt", dt)
    rows.insert(0, "run_id", runs.run_id(cfg, dt))
    with runs.step(spark, "write metrics"):
        write_metrics(spark, cfg, rows, dt, mid)
    dser = rows[rows["model"] == "DSER"]
    models.update_manifest(spark, cfg, mid, evaluated_for=dt, test={
        f"{p} {m}@{k}" if m != "MRR" else f"{p} MRR": v
        for p, m, k, v in zip(dser["protocol"], dser["metric"], dser["k"], dser["value"])})
    if cfg.evaluate.report:
        with runs.step(spark, "report"), tempfile.TemporaryDirectory() as tmp:
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
    with runs.step(spark, "quality gate"):
        decision = publish.quality_gate(spark, cfg, mid, opts.force)
    log.info("%s", decision)
    _note(quality_gate=decision)
    files = models.files(spark, cfg, mid, selection.serving_scope(trained_config(spark, cfg, mid)))
    model_items = stored_item_ids(files)
    interactions = tables.read_table(spark, cfg, "interactions")
    users = recommend.id_list(spark, cfg, rc.users, rc.user_ids, "user_id")
    items = recommend.candidate_items(spark, cfg, model_items)
    recs = recommend.recommend_all(spark, files, interactions, rc, users, items).withColumn("model_run_id",
                                                                                            F.lit(mid))
    targets = interactions.select("user_id").distinct() if users is None else users
    with runs.step(spark, "score, check and publish"):
        location = publish.publish_recommendations(spark, cfg, recs, dt, targets,
                                                   model_items if items is None else items, interactions)
    published = models.manifest(spark, cfg, mid)["published"]
    models.update_manifest(spark, cfg, mid, published=sorted({*published, dt}))
    with runs.step(spark, "retain models"):
        models.retain(spark, cfg, publish.published_models(spark, cfg))
    by_source = (spark.read.parquet(location).groupBy("source")
                 .agg(F.countDistinct("user_id").alias("users"), F.min("user_id").alias("first")).collect())
    sources = {r["source"]: r["users"] for r in by_source}
    log.info("recommend: users per source %s, published at %s", sources, location)
    return {"users": sum(sources.values()), "sources": sources, "location": location, "model_id": mid,
            "example_user": min((r["first"] for r in by_source), default=None)}


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
