"""Atomic table writes, partition publishing, validation and retention."""
import pytest
from pyspark.sql import functions as F

from dser_spark import partitioned, tables


def _df(spark, n, tag):
    return spark.range(n).withColumn("tag", F.lit(tag))


def test_write_table_replaces_and_registers(spark, make_config):
    cfg = make_config()
    tables.write_table(spark, cfg, _df(spark, 3, "a"), "things")
    tables.write_table(spark, cfg, _df(spark, 5, "b"), "things")
    got = tables.read_table(spark, cfg, "things")
    assert got.count() == 5 and {r.tag for r in got.collect()} == {"b"}
    assert spark.sql("SELECT count(*) AS n FROM dser.things").first().n == 5
    tables.write_table(spark, cfg, _df(spark, 2, "c").withColumn("extra", F.lit(1.5)), "things")  # new schema
    assert spark.sql("SELECT sum(extra) AS s FROM dser.things").first().s == 3.0


def test_the_catalog_gets_the_column_types_of_the_parquet_files(spark, make_config):
    cfg = make_config()
    df = spark.sql("SELECT CAST(1 AS INT) AS i, 2L AS l, CAST(0.5 AS FLOAT) AS f, 0.25D AS d, 'x' AS s, "
                   "true AS b, TIMESTAMP '2026-01-01 00:00:00' AS ts, DATE '2026-01-02' AS dt, "
                   "CAST(1.5 AS DECIMAL(10, 2)) AS dec, array(CAST(1.0 AS FLOAT)) AS v, array(1, 2) AS a, "
                   "map('k', 1) AS m, named_struct('x', 1, 'y', array('z')) AS st")
    uri = tables.write_table(spark, cfg, df, "typed")
    written = [(f.name, f.dataType.simpleString()) for f in spark.read.parquet(uri).schema]
    assert [(f.name, f.dataType.simpleString()) for f in spark.table("dser.typed").schema] == written
    assert spark.sql("SELECT st.y[0] AS z, m['k'] AS k FROM dser.typed").first() == ("z", 1)


def test_failed_write_leaves_the_previous_table(spark, make_config):
    cfg = make_config()
    tables.write_table(spark, cfg, _df(spark, 3, "good"), "things")
    boom = spark.range(10).withColumn("tag", F.when(F.col("id") == 7, F.raise_error(F.lit("killed mid-write")))
                                      .otherwise(F.lit("bad")))
    with pytest.raises(Exception, match="killed mid-write"):
        tables.write_table(spark, cfg, boom, "things")
    got = tables.read_table(spark, cfg, "things").collect()
    assert len(got) == 3 and {r.tag for r in got} == {"good"}


def test_missing_table_error_names_it(spark, make_config):
    with pytest.raises(FileNotFoundError, match="'nothing'"):
        tables.read_table(spark, make_config(), "nothing")


def test_publish_validates_retains_and_replaces_same_dt(spark, make_config):
    cfg = make_config("publish.retain=2")
    for day, n in (("2026-01-01", 1), ("2026-01-02", 2), ("2026-01-03", 3)):
        partitioned.publish(spark, cfg, _df(spark, n, day), "recs", day)
    assert partitioned.partitions(spark, cfg, "recs") == ["2026-01-02", "2026-01-03"]
    partitioned.publish(spark, cfg, _df(spark, 7, "again"), "recs", "2026-01-03")
    rows = spark.sql("SELECT dt, count(*) AS n FROM dser.recs GROUP BY dt ORDER BY dt").collect()
    assert [(r.dt, r.n) for r in rows] == [("2026-01-02", 2), ("2026-01-03", 7)]
    assert [r[0] for r in spark.sql("SHOW PARTITIONS dser.recs").collect()] == ["dt=2026-01-02", "dt=2026-01-03"]

    def reject(df):
        raise ValueError("staged partition is wrong")

    with pytest.raises(ValueError, match="staged partition is wrong"):
        partitioned.publish(spark, cfg, _df(spark, 99, "bad"), "recs", "2026-01-03", [reject])
    again = partitioned.read(spark, cfg, "recs").groupBy("dt").count().orderBy("dt").collect()
    assert [r["count"] for r in again] == [2, 7]
    assert spark.sql("SELECT count(*) AS n FROM dser.recs").first().n == 9
    assert [p["rows"] for p in partitioned.manifest(spark, cfg, "recs")["partitions"]] == [2, 7]


def test_the_database_lives_at_the_warehouse_root(spark, make_config, tmp_path):
    cfg = make_config("warehouse.database=dser_located")
    tables.write_table(spark, cfg, _df(spark, 1, "x"), "things")
    info = {r[0]: r[1] for r in spark.sql("DESCRIBE DATABASE dser_located").collect()}
    assert tables._plain(info["Location"]) == tables._plain(tables.root_uri(cfg))  # file:/x and file:///x alike
