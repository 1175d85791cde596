"""Session set-up: spark-submit's settings win; one-machine conveniences only for local masters."""
import sys

import pytest

from dser_spark.config import load_config
from dser_spark.session import is_local, metastore_dir, plan

DERBY = "spark.hadoop.javax.jdo.option.ConnectionURL"


@pytest.mark.parametrize("master", ["local", "local[*]", "local[2,3]", "local-cluster[2,1,1024]"])
def test_local_masters_get_loopback_this_interpreter_and_an_embedded_metastore(master, tmp_path):
    cfg = load_config(None, [f"spark.master={master}", f"warehouse.root={tmp_path}/wh"])
    p = plan(cfg, {})
    assert is_local(master) and p.master == master
    assert p.environment["SPARK_LOCAL_IP"] == "127.0.0.1" and p.environment["PYSPARK_PYTHON"] == sys.executable
    assert p.settings[DERBY] == f"jdbc:derby:;databaseName={tmp_path}/wh/metastore_db;create=true"
    assert p.settings["spark.sql.warehouse.dir"] == f"{tmp_path}/wh/spark-warehouse"


@pytest.mark.parametrize("master", ["yarn", "k8s://https://api:6443", "spark://head:7077"])
def test_cluster_masters_keep_the_clusters_own_settings(master):
    cfg = load_config(None, [f"spark.master={master}", "warehouse.root=hdfs:///warehouse/dser"])
    p = plan(cfg, {})
    assert p.master == master and not is_local(master)
    assert "SPARK_LOCAL_IP" not in p.environment and "PYSPARK_PYTHON" not in p.environment
    assert DERBY not in p.settings and "spark.sql.warehouse.dir" not in p.settings
    assert p.settings["spark.sql.catalogImplementation"] == "hive"  # the cluster's metastore (hive-site.xml)


def test_what_spark_submit_set_wins_over_the_config(tmp_path):
    cfg = load_config(None, ["spark.master=local[*]", f"warehouse.root={tmp_path}",
                             "spark.conf.spark.sql.shuffle.partitions=8"])
    submitted = {"spark.master": "yarn", "spark.sql.shuffle.partitions": "200", "spark.submit.deployMode": "client"}
    p = plan(cfg, submitted)
    assert p.master is None  # the builder leaves spark-submit's master alone ...
    assert "spark.sql.shuffle.partitions" not in p.settings  # ... and its --conf
    assert DERBY not in p.settings and "SPARK_LOCAL_IP" not in p.environment  # yarn: no local defaults
    local = plan(cfg, {"spark.master": "local-cluster[2,1,1024]"})
    assert local.master is None and DERBY in local.settings


def test_a_configured_metastore_is_not_replaced_by_derby(tmp_path):
    cfg = load_config(None, [f"warehouse.root={tmp_path}", "spark.conf.spark.hadoop.hive.metastore.uris=thrift://m:9083"])
    assert DERBY not in plan(cfg, {}).settings
    assert DERBY not in plan(load_config(None, ["warehouse.catalog=in-memory"]), {}).settings


def test_derby_cannot_live_on_a_remote_warehouse(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert metastore_dir(load_config(None, ["warehouse.root=s3a://bucket/dser"])) == f"{tmp_path}/metastore_db"
    assert metastore_dir(load_config(None, ["warehouse.root=file:///data/wh"])) == "/data/wh/metastore_db"
    assert metastore_dir(load_config(None, ["warehouse.root=s3a://b/d", "warehouse.metastore=/meta"])) == "/meta"
