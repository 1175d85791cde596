"""Publishing recommendations: validated, atomic under failures, registered, retained, readable by path."""
import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F

from dser_spark import models, partitioned, pipeline, tables
from dser_spark.artifacts import Trained
from dser_spark.config import ModelConfig
from dser_spark.model import DSER, Inputs
from dser_spark.publish import check_recommendations

DAY1, DAY2 = "2026-03-01", "2026-03-02"


def _put_model(spark, cfg, dt, seed=0):
    """A random serving model over users 1..5 and items 1..12, stored as a complete model for ``dt``."""
    g = torch.Generator().manual_seed(seed)
    inputs = Inputs(torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(12, 4, generator=g),
                    torch.randn(12, 4, generator=g), torch.randn(12, 2, generator=g), torch.tensor([2]))
    model = DSER(inputs, ModelConfig(gmf_dim=3, mlp_layers=[4, 2])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    mid = f"dser-test{seed:08d}"
    models.store(spark, cfg, mid, {"serve": Trained(model, np.arange(1, 6), np.arange(1, 13))}, {"seed": seed}, dt)
    return mid


@pytest.fixture
def world(spark, make_config, tmp_path):
    """interactions of users 1..6 (6 is unknown to the model), items with titles, a model per day."""
    cfg = make_config("recommend.k=3", "embed.epochs=2", "publish.retain=1")
    rows = [(u, i, float(u + i), u * 100 + n) for u in range(1, 7) for n, i in enumerate(range(u, u + 2 + u % 3))]
    tables.write_table(spark, cfg, spark.createDataFrame(rows, "user_id int, item_id int, rating float, t int")
                       .selectExpr("user_id", "item_id", "rating", "timestamp_seconds(t) AS ts"), "interactions")
    items = [(i, f"Title {i}", ["Drama"] if i % 2 else ["Comedy", "Drama"]) for i in range(1, 13)]
    tables.write_table(spark, cfg, spark.createDataFrame(items, "item_id int, title string, genres array<string>"),
                       "items")
    for seed, dt in enumerate((DAY1, DAY2)):
        _put_model(spark, cfg, dt, seed)
    return cfg, pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "t"])


def _by_path(cfg, dt):
    """The partition as DuckDB reads it from the Parquet files the manifest names (no Spark, no metastore)."""
    files = partitioned.published_files(tables.table_uri(cfg, "recommendations").removeprefix("file://"))[dt]
    return duckdb.sql(f"SELECT * FROM read_parquet({files}) ORDER BY user_id, rank").df()


def test_run_recommend_publishes_a_validated_partition_views_and_retention(spark, world):
    cfg, inter = world
    first = pipeline.run_stage(spark, cfg, "recommend", DAY1)
    assert first["users"] == 6 and first["sources"] == {"model": 5, "inferred": 1}
    recs = _by_path(cfg, DAY1)
    assert len(recs) == 6 * 3 and set(recs.model_run_id) == {"dser-test00000000"}  # the model trained for DAY1
    assert not set(zip(recs.user_id, recs.item_id)) & set(zip(inter.user_id, inter.item_id))
    titled = spark.sql("SELECT * FROM dser.recommendations_latest ORDER BY user_id, rank").toPandas()
    assert titled.title.tolist() == [f"Title {i}" for i in recs.item_id] and set(titled.dt) == {DAY1}

    pipeline.run_stage(spark, cfg, "recommend", DAY2, pipeline.Options(force=True))  # no metrics: past the gate
    # publish.retain=1: DAY1 goes, from the files and the catalog
    assert partitioned.partitions(spark, cfg, "recommendations") == [DAY2]
    assert [r[0] for r in spark.sql("SHOW PARTITIONS dser.recommendations").collect()] == [f"dt={DAY2}"]
    assert {r.dt for r in spark.sql("SELECT DISTINCT dt FROM dser.recommendations_latest").collect()} == {DAY2}
    catalog = spark.sql(f"SELECT * FROM dser.recommendations WHERE dt = '{DAY2}'").toPandas()
    assert len(catalog) == len(_by_path(cfg, DAY2)) == 18


def _published(spark, cfg, dt, n):
    df = spark.range(n).selectExpr("CAST(id AS INT) AS user_id", "1 AS rank", "CAST(id AS INT) AS item_id",
                                   "0.5f AS score", "'model' AS source", f"'{dt}' AS model_run_id")
    partitioned.publish(spark, cfg, df, "recommendations", dt)
    return df


def test_a_run_killed_mid_write_leaves_the_published_partitions_as_they_were(spark, make_config):
    cfg = make_config()
    _published(spark, cfg, DAY1, 40)
    doomed = (spark.range(0, 400, numPartitions=4)
              .selectExpr("CAST(id AS INT) AS user_id", "1 AS rank", "CAST(id AS INT) AS item_id", "0.5f AS score",
                          "'model' AS source", "'doomed' AS model_run_id")
              .withColumn("score", F.when(F.col("user_id") == 399, F.raise_error(F.lit("killed mid-write")))
                          .otherwise(F.col("score"))))
    for dt in (DAY2, DAY1):  # a new night, and a re-run of the published one
        with pytest.raises(Exception, match="killed mid-write"):
            partitioned.publish(spark, cfg, doomed, "recommendations", dt)
    assert partitioned.partitions(spark, cfg, "recommendations") == [DAY1]
    assert len(_by_path(cfg, DAY1)) == 40 and set(_by_path(cfg, DAY1).model_run_id) == {DAY1}
    assert spark.sql("SELECT count(*) AS n FROM dser.recommendations").first().n == 40
    versions = tables.filesystem(spark, cfg).list_dirs(f"{tables.table_uri(cfg, 'recommendations')}/dt={DAY1}")
    assert len(versions) == 1  # the failed write removed its own version


def test_a_killed_run_never_shows_and_its_leftovers_go_with_the_next_publish(spark, make_config):
    """A version being written (or left by a killed run) is in the tree but in no pointer: the catalog and
    the manifest show the published version only, and the next publish removes the leftover."""
    cfg = make_config()
    _published(spark, cfg, DAY1, 5)
    table = tables.table_uri(cfg, "recommendations")
    leftover = f"{table}/dt={DAY1}/20991231T000000-deadbeef"
    spark.range(99).write.parquet(leftover)  # as a run killed after writing, before pointing
    spark.range(3).write.parquet(f"{table}/dt={DAY2}/20991231T000000-0badcafe")  # a new night, never pointed to
    assert spark.sql(f"SELECT count(*) AS n FROM dser.recommendations WHERE dt = '{DAY1}'").first().n == 5
    assert len(_by_path(cfg, DAY1)) == 5 and partitioned.partitions(spark, cfg, "recommendations") == [DAY1]
    _published(spark, cfg, DAY1, 7)  # a re-run: the pointers move, then the old version and leftovers go
    fs = tables.filesystem(spark, cfg)
    assert len(_by_path(cfg, DAY1)) == 7 and fs.list_dirs(table) == [f"dt={DAY1}"]
    assert fs.list_dirs(f"{table}/dt={DAY1}") == [partitioned.location(spark, cfg, "recommendations", DAY1)
                                                   .rsplit("/", 1)[1]]
    assert spark.sql("SELECT count(*) AS n FROM dser.recommendations").first().n == 7


def test_a_table_published_before_manifests_is_adopted(spark, make_config):
    """Partitions swapped in by rename (dt=<dt>/part-*.parquet) stay readable and are kept."""
    cfg = make_config()
    table = tables.table_uri(cfg, "recommendations")
    spark.range(4).selectExpr("CAST(id AS INT) AS user_id").write.parquet(f"{table}/dt={DAY1}")
    assert partitioned.partitions(spark, cfg, "recommendations") == [DAY1]
    partitioned.publish(spark, cfg, spark.range(2).selectExpr("CAST(id AS INT) AS user_id"), "recommendations", DAY2)
    assert partitioned.partitions(spark, cfg, "recommendations") == [DAY1, DAY2]
    assert spark.sql(f"SELECT count(*) AS n FROM dser.recommendations WHERE dt = '{DAY1}'").first().n == 4


def test_validation_names_every_problem_and_publishes_nothing(spark, world):
    cfg, inter = world
    interactions = tables.read_table(spark, cfg, "interactions")
    candidates = spark.createDataFrame([(i,) for i in range(1, 13)], "item_id int")
    targets = spark.createDataFrame([(u,) for u in range(1, 6)], "user_id int")
    good = [(u, r, i, 1.0 - r / 10) for u in range(1, 6)
            for r, i in enumerate([i for i in range(1, 13) if (u, i) not in set(zip(inter.user_id, inter.item_id))][:3],
                                  start=1)]
    bad = [row for row in good if row[0] != 1]                       # user 1 has no rows
    bad = [(u, 5 if (u, r) == (2, 3) else r, i, s) for u, r, i, s in bad]  # user 2 skips rank 3..4
    bad = [(u, r, 3 if (u, r) == (3, 1) else i, s) for u, r, i, s in bad]  # user 3 gets an item they rated
    bad.append((6, 1, 1, 0.1))                                        # user 6 was not asked for
    schema = "user_id int, rank int, item_id int, score double"
    check_recommendations(spark.createDataFrame(good, schema), targets, candidates, interactions, 3, True)
    with pytest.raises(tables.ValidationError) as err:
        check_recommendations(spark.createDataFrame(bad, schema), targets, candidates, interactions, 3, True)
    for text in ("1 users without recommendations", "1 users not asked for", "ranks are not 1..n",
                 "1 rows with items the user already interacted with"):
        assert text in str(err.value)
    with pytest.raises(tables.ValidationError):
        partitioned.publish(spark, cfg, spark.createDataFrame(bad, schema), "recommendations", DAY1, [
            lambda df: check_recommendations(df, targets, candidates, interactions, 3, True)])
    assert partitioned.partitions(spark, cfg, "recommendations") == []
