"""End to end: the nightly job through the command line on small data (real ml-100k: test_lifecycle.py)."""
import csv
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from dser_spark import cli, partitioned, runs, tables
from dser_spark.config import load_config
from dser_spark.serving.diagram import architecture, describe, dot

DT = "2026-11-25"


@pytest.fixture
def small_movielens(tmp_path):
    """ml-latest layout: 60 users x 80 movies, two taste groups, increasing timestamps."""
    rng = np.random.default_rng(5)
    root = tmp_path / "ml-small"
    root.mkdir()
    movies = [(m, f"Movie, number {m} ({1990 + m % 20})", "Comedy|Drama" if m % 2 else "Action")
              for m in range(1, 81)]
    with open(root / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        w.writerows(movies)
    with open(root / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        start = int(dt.datetime(2015, 1, 1).timestamp())
        for u in range(1, 61):
            pool = np.arange(1, 41) if u % 2 else np.arange(41, 81)
            for j, m in enumerate(rng.choice(pool, size=rng.integers(8, 25), replace=False)):
                w.writerow([u, int(m), float(rng.integers(1, 11)) / 2, start + 3600 * (j + 24 * u)])
    return root


def _run(*overrides, stage="nightly"):
    args = [stage, "--config", "conf/default.yaml", "--dt", DT]
    for o in overrides:
        args += ["--set", o]
    return cli.main(args)


def _check_published(spark, cfg, n_users, k):
    recs = spark.read.parquet(partitioned.location(spark, cfg, "recommendations", DT)).toPandas()
    inter = spark.read.parquet(tables.table_uri(cfg, "interactions")).toPandas()
    assert recs.user_id.nunique() == n_users
    assert len(recs) == n_users * k  # every user has at least k unseen items here
    assert not recs.duplicated(["user_id", "rank"]).any()
    for _, g in recs.groupby("user_id"):
        assert sorted(g["rank"]) == list(range(1, k + 1))
        assert (np.diff(g.sort_values("rank").score.to_numpy()) <= 1e-7).all()
    seen = set(zip(inter.user_id, inter.item_id))
    assert not any((u, i) in seen for u, i in zip(recs.user_id, recs.item_id))
    assert set(recs.item_id) <= set(inter.item_id)
    assert recs.model_run_id.nunique() == 1
    return recs


def test_nightly_on_small_synthetic_movielens(spark, small_movielens, tmp_path, capsys):
    overrides = [f"data.path={small_movielens}", "data.format=ml-latest", f"warehouse.root={tmp_path / 'wh'}",
                 "train.epochs=2", "embed.epochs=5", "embed.content_epochs=5", "recommend.k=5",
                 "train.show_progress=false"]
    assert _run(*overrides) == 0
    out = capsys.readouterr().out
    assert "users scored: 60" in out and "HR@10" in out and "SELECT" in out
    cfg = load_config("conf/default.yaml", overrides)
    first = _check_published(spark, cfg, 60, 5)
    from_catalog = spark.sql(f"SELECT * FROM dser.recommendations WHERE dt = '{DT}'").count()
    assert from_catalog == len(first)
    metrics = spark.read.parquet(tables.table_uri(cfg, "metrics")).toPandas()
    assert set(metrics.model) == {"DSER", "ItemPop", "Recency", "ALS"}  # the default evaluate.baselines
    assert set(metrics.protocol) == {"sampled", "full"}
    # idempotent for a dt, and deterministic: a re-run gives the same table
    assert _run(*overrides) == 0
    second = _check_published(spark, cfg, 60, 5)
    key = ["user_id", "rank"]
    pd.testing.assert_frame_equal(first.sort_values(key).reset_index(drop=True),
                                  second.sort_values(key).reset_index(drop=True))


def test_single_stages_and_clear_errors(spark, small_movielens, tmp_path, capsys):
    root = tmp_path / "wh"
    assert _run(f"warehouse.root={root}", stage="sequences") == 1
    assert "interactions" in capsys.readouterr().err
    assert _run("train.epochs=lots", stage="prepare") == 2
    assert "train.epochs" in capsys.readouterr().err


def _vector_tables(spark, cfg):
    keys = {"user_vectors": ["scope", "user_id"], "item_seq_vectors": ["scope", "item_id"],
            "item_content_vectors": ["item_id"]}
    return {name: spark.read.parquet(tables.table_uri(cfg, name)).toPandas().sort_values(key)
            .reset_index(drop=True) for name, key in keys.items()}


def _plain(column: pd.Series) -> list:
    return [np.asarray(v).tolist() for v in column]


def test_doc2vec_in_executors_gives_the_driver_vectors(spark, small_movielens, tmp_path):
    overrides = [f"data.path={small_movielens}", "data.format=ml-latest", f"warehouse.root={tmp_path / 'wh'}",
                 "embed.epochs=3", "embed.content_epochs=3"]
    for stage in ("prepare", "sequences", "embed"):
        assert _run(*overrides, stage=stage) == 0
    cfg = load_config("conf/default.yaml", overrides)
    on_driver = _vector_tables(spark, cfg)
    assert _run(*overrides, "embed.on_executor=true", stage="embed") == 0
    on_executors = _vector_tables(spark, cfg)
    assert len(on_driver["user_vectors"]) == 3 * 60  # select, eval and serve scopes
    for name, frame in on_driver.items():
        assert frame["vector"].map(lambda v: float(np.abs(v).sum())).gt(0).all(), name
        for column in frame.columns:
            assert _plain(frame[column]) == _plain(on_executors[name][column]), (name, column)
    record = tables.read_json(spark, cfg, runs.record_name(cfg, DT, "embed"))
    assert [s["step"] for s in record["steps"]][0] == "doc2vec" and record["spark_jobs"] >= 3


def test_nightly_with_the_attention_encoder_and_sasrec(spark, small_movielens, tmp_path):
    """The attention encoder through every stage (stored, evaluated on the executors, served), SASRec and a
    doc2vec-family baseline (its own pairwise loss) beside it."""
    overrides = [f"data.path={small_movielens}", "data.format=ml-latest", f"warehouse.root={tmp_path / 'wh'}",
                 "model.encoder=attention", "model.attention.dim=16", "model.attention.max_len=20",
                 "train.loss=full_softmax", "train.batch_size=8", "train.lr=0.01", "train.epochs=10", "train.patience=0",
                 "train.validation_metric=full",  # the epochs chosen on full-ranking validation HR@10
                 "embed.epochs=5", "embed.content_epochs=5", "recommend.k=5", "train.show_progress=false",
                 "evaluate.baselines=[ItemPop, Recency, SASRec, GMF]", "evaluate.baseline_epochs=1"]
    assert _run(*overrides) == 0
    cfg = load_config("conf/default.yaml", overrides)
    first = _check_published(spark, cfg, 60, 5)
    metrics = spark.read.parquet(tables.table_uri(cfg, "metrics")).toPandas()
    assert set(metrics.model) == {"DSER", "ItemPop", "Recency", "SASRec", "GMF"}  # Doc2Vec-family ones load too
    hr = metrics.query("protocol == 'sampled' and metric == 'HR' and k == 10").set_index("model")["value"]
    print(hr.to_dict())
    assert hr["DSER"] > 0.3  # two taste groups of 40 items: chance is ~0.17, a model that learned them ~0.4
    assert set(first.source) == {"model"}
    directory = tmp_path / "wh" / "models" / first.model_run_id.iloc[0]
    arch = architecture(directory, json.loads((directory / "manifest.json").read_text()))
    lines = describe(arch)  # the dashboard's drawing of the served model
    assert arch.items == 80 and lines[0].startswith("Attention encoder: the user's last 20 items, item embeddings 80 x 16")
    assert "Doc2Vec item vectors as the ID embedding's start" in lines[1] and "2 causal" in dot(arch)
