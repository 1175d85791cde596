"""Session set-up: spark-submit's settings win; one-machine conveniences only for local masters."""
import os
import subprocess
import sys
import time

import pytest

from dser_spark.config import load_config
from dser_spark.session import (
    ARCHIVE, JAVA_OPTIONS as JAVA_OPTS, _remove_unused_archives, class_archive, is_local, metastore_dir, plan,
)

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


def test_the_driver_jvm_records_a_class_archive_when_there_is_none_and_starts_from_it_after(tmp_path):
    cache = tmp_path / "cache"
    assert class_archive(str(cache)) is None  # nothing to start from, and only the CLI records
    first = class_archive(str(cache), record=True)
    assert first.part is not None and first.part.parent == cache and f".{os.getpid()}." in first.part.name
    assert first.java_option().startswith(f"-XX:ArchiveClassesAtExit={first.part} ")
    first.path.write_bytes(b"recorded")
    second = class_archive(str(cache), record=True)
    assert second.path == first.path and second.part is None
    assert second.java_option().startswith(f"-XX:SharedArchiveFile={first.path} -Xshare:on ")
    assert class_archive(str(cache)) == second and class_archive("", record=True) is None
    assert class_archive(str(cache), "/opt/extra.jar", True).path != first.path  # another class path, another archive


def test_parts_left_by_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / f"{ARCHIVE}k.{dead.pid}.part", tmp_path / f"{ARCHIVE}k.{os.getpid()}.part"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    class_archive(str(tmp_path), record=True)
    assert not stale.exists() and live.exists()


def test_archives_no_run_started_from_for_a_month_are_removed_when_another_is_kept(tmp_path):
    kept, recent, old = (tmp_path / f"{ARCHIVE}{name}.jsa" for name in ("kept", "recent", "old"))
    for path in (kept, recent, old):
        path.write_bytes(b"x")
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    os.utime(kept, (month_ago, month_ago))
    _remove_unused_archives(tmp_path, kept)
    assert kept.exists() and recent.exists() and not old.exists()
    real = class_archive(str(tmp_path), record=True)
    real.path.write_bytes(b"x")
    os.utime(real.path, (month_ago, month_ago))
    assert class_archive(str(tmp_path)).path == real.path and real.path.stat().st_mtime > month_ago  # touched


def test_only_a_local_driver_jvm_that_python_starts_gets_a_class_archive(tmp_path):
    local = [f"warehouse.root={tmp_path}/wh", f"spark.class_cache={tmp_path}/cache"]
    assert "-XX:ArchiveClassesAtExit" in plan(load_config(None, local), {}, True).settings[JAVA_OPTS]
    assert plan(load_config(None, local), {}).class_archive is None  # records only when asked (the CLI)
    submitted = plan(load_config(None, local), {"spark.master": "local[2]"}, True)  # spark-submit started the JVM
    assert submitted.class_archive is None and "ArchiveClasses" not in submitted.settings.get(JAVA_OPTS, "")
    cluster = plan(load_config(None, local + ["spark.master=yarn"]), {}, True)
    assert cluster.class_archive is None and "Archive" not in cluster.settings[JAVA_OPTS]
    own = plan(load_config(None, local + [f"spark.conf.{JAVA_OPTS}=-Xss4m"]), {}, True)
    assert own.class_archive is None and own.settings[JAVA_OPTS] == "-Xss4m"  # the user's options are theirs
    assert plan(load_config(None, local + ["spark.class_cache="]), {}, True).class_archive is None


SESSION_RUN = """
import sys
from dser_spark.config import load_config
from dser_spark.logs import setup_logging
from dser_spark.session import build_session, stop_session
setup_logging()
spark = build_session(load_config(None, sys.argv[1:]), record_classes=True)
assert spark.range(1000).selectExpr("sum(id) AS s").first()["s"] == 499500
stop_session(spark)
"""


@pytest.mark.slow
def test_a_real_driver_jvm_records_starts_from_and_survives_a_damaged_class_archive(tmp_path):
    cache = tmp_path / "cache"
    sets = [f"warehouse.root={tmp_path}/wh", f"spark.class_cache={cache}", "spark.master=local[1]"]

    def run() -> str:
        done = subprocess.run([sys.executable, "-c", SESSION_RUN, *sets], capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    assert "records the class archive" in run()
    archives = list(cache.glob(f"{ARCHIVE}*.jsa"))
    assert len(archives) == 1 and archives[0].stat().st_size > 10 * 2**20 and not list(cache.glob("*.part"))
    second = run()
    assert "starts from the class archive" in second and "could not start" not in second
    whole = archives[0].read_bytes()
    archives[0].chmod(0o644)
    archives[0].write_bytes(whole[:len(whole) // 2])  # cut short: the JVM that maps it crashes
    third = run()  # starts again without it, and removes it
    assert "could not start from the class archive" in third and not archives[0].exists()
    assert not list(tmp_path.glob("hs_err*"))  # the crash report is kept beside the archives, not here
