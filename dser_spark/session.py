"""SparkSession set-up that works on a fresh machine without hand-set environment."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark import SparkConf
from pyspark.sql import SparkSession

from dser_spark.config import Config
from dser_spark.logs import quiet_libraries

log = logging.getLogger("dser_spark")


def _prepare_environment() -> None:
    """Executors use this interpreter; Spark binds to loopback when run locally."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


def metastore_dir(cfg: Config) -> str:
    """Directory of the embedded Derby metastore for this config."""
    if cfg.warehouse.metastore:
        return str(Path(cfg.warehouse.metastore).absolute())
    root = cfg.warehouse.root
    if "://" in root and not root.startswith("file:"):
        return str(Path("metastore_db").absolute())
    return str(Path(root.removeprefix("file:"), "metastore_db").absolute())


def build_session(cfg: Config) -> SparkSession:
    """Create (or reuse) the session; spark-submit's --master/--conf win over cfg."""
    _prepare_environment()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    submitted = SparkConf()  # holds what spark-submit passed, if launched by it
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    if not submitted.contains("spark.master"):
        builder = builder.master(cfg.spark.master)
    settings = dict(cfg.spark.conf)
    settings.setdefault("spark.sql.session.timeZone", "UTC")
    settings.setdefault("spark.python.worker.faulthandler.enabled", "true")
    settings.setdefault("spark.ui.showConsoleProgress", "false")
    java_opts = [f"-Dlog4j2.configurationFile={Path(__file__).with_name('log4j2.properties')}"]
    if cfg.warehouse.catalog == "hive":
        meta = metastore_dir(cfg)
        Path(meta).parent.mkdir(parents=True, exist_ok=True)
        settings.setdefault("spark.sql.catalogImplementation", "hive")
        settings.setdefault("spark.hadoop.javax.jdo.option.ConnectionURL",
                            f"jdbc:derby:;databaseName={meta};create=true")
        settings.setdefault("spark.sql.warehouse.dir", str(Path(meta).parent / "spark-warehouse"))
        java_opts.append(f"-Dderby.system.home={Path(meta).parent}")
    settings.setdefault("spark.driver.extraJavaOptions", " ".join(java_opts))
    for key, value in settings.items():
        if not submitted.contains(key):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    quiet_libraries()
    return spark
