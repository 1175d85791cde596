"""SparkSession set-up: works on a fresh machine with nothing set by hand, and defers to spark-submit.

What spark-submit set (``--master``, ``--conf``) wins over the config: when the
driver was started by spark-submit, its JVM is already running and holds those
settings, so they are read from it before the session is built. The
conveniences of a one-machine run (executors use this interpreter, Spark binds
to loopback, an embedded Derby metastore and a local warehouse directory) apply
only to ``local*`` masters; on a cluster its own settings (hive-site.xml,
spark-defaults.conf, ``spark.pyspark.python``) are left alone.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from dser_spark.config import Config
from dser_spark.logs import quiet_libraries

log = logging.getLogger("dser_spark")

LOG4J = Path(__file__).with_name("log4j2.properties")
METASTORE_KEYS = ("spark.hadoop.javax.jdo.option.ConnectionURL", "spark.hadoop.hive.metastore.uris",
                  "hive.metastore.uris")


def is_local(master: str) -> bool:
    """``local``, ``local[*]``, ``local[2,3]``, ``local-cluster[...]``: everything runs on this machine."""
    return master.startswith("local")


def submitted_conf() -> dict[str, str]:
    """The settings spark-submit gave this driver (empty when not started by spark-submit)."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return {}
    SparkContext._ensure_initialized()  # connects to the JVM spark-submit started; loads its spark.* properties
    return dict(SparkConf().getAll())


def metastore_dir(cfg: Config) -> str:
    """Directory of the embedded Derby metastore (local masters only).

    ``warehouse.metastore`` if set; else ``<root>/metastore_db`` for a local
    root; Derby cannot live on hdfs:// or s3a://, so a remote root without a
    ``warehouse.metastore`` keeps it in the current directory.
    """
    if cfg.warehouse.metastore:
        return str(Path(cfg.warehouse.metastore).absolute())
    root = cfg.warehouse.root
    if "://" in root and not root.startswith("file:"):
        return str(Path("metastore_db").absolute())
    return str(Path(root.removeprefix("file://").removeprefix("file:"), "metastore_db").absolute())


@dataclass
class SessionPlan:
    """What ``build_session`` sets: the master (None: spark-submit's), settings, environment."""

    master: str | None
    settings: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)


def plan(cfg: Config, submitted: dict[str, str]) -> SessionPlan:
    """The session's settings for ``cfg``; keys spark-submit set are left to it."""
    master = submitted.get("spark.master", cfg.spark.master)
    settings = {"spark.sql.session.timeZone": "UTC", "spark.python.worker.faulthandler.enabled": "true",
                "spark.ui.showConsoleProgress": "false", **cfg.spark.conf}
    java_opts = [f"-Dlog4j2.configurationFile={LOG4J}"]
    environment = {"PYARROW_IGNORE_TIMEZONE": "1"}
    if cfg.warehouse.catalog == "hive":
        settings.setdefault("spark.sql.catalogImplementation", "hive")
    if is_local(master):
        environment.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                           SPARK_LOCAL_IP="127.0.0.1")
        configured = any(k in settings or k in submitted for k in METASTORE_KEYS)
        if cfg.warehouse.catalog == "hive" and not configured:
            meta = metastore_dir(cfg)
            settings.setdefault("spark.hadoop.javax.jdo.option.ConnectionURL",
                                f"jdbc:derby:;databaseName={meta};create=true")
            settings.setdefault("spark.sql.warehouse.dir", str(Path(meta).parent / "spark-warehouse"))
            java_opts.append(f"-Dderby.system.home={Path(meta).parent}")
    settings.setdefault("spark.driver.extraJavaOptions", " ".join(java_opts))
    return SessionPlan(None if "spark.master" in submitted else master,
                       {k: v for k, v in settings.items() if k not in submitted}, environment)


def build_session(cfg: Config) -> SparkSession:
    """Create (or reuse) the session; spark-submit's --master/--conf win over ``cfg``."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    p = plan(cfg, submitted_conf())
    for key, value in p.environment.items():
        os.environ.setdefault(key, value)
    if "spark.hadoop.javax.jdo.option.ConnectionURL" in p.settings:
        Path(metastore_dir(cfg)).parent.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    if p.master is not None:
        builder = builder.master(p.master)
    for key, value in p.settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    quiet_libraries()
    log.info("spark: master %s, %d cores by default", spark.sparkContext.master,
             spark.sparkContext.defaultParallelism)
    return spark
