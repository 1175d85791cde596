"""Warehouse tables: Parquet directories under ``warehouse.root``, swapped in whole.

Every write goes to a staging directory first and is renamed into place only
when complete, so a failed or killed run never leaves a half-written table.
Each table is also registered in the Spark catalog database (``dser``).
"""
from __future__ import annotations

import logging
import uuid
from typing import Iterable

from pyspark.sql import DataFrame, SparkSession

from dser_spark.config import Config

log = logging.getLogger("dser_spark")


class ValidationError(ValueError):
    """A staged output failed its checks and was not published."""


def root_uri(cfg: Config) -> str:
    """Absolute URI of the warehouse root (local paths become file: URIs)."""
    root = cfg.warehouse.root.rstrip("/")
    if "://" in root or root.startswith("file:"):
        return root
    from pathlib import Path

    return Path(root).absolute().as_uri()


def table_uri(cfg: Config, name: str) -> str:
    """Location of table ``name`` under the warehouse root."""
    return f"{root_uri(cfg)}/{name}"


class _FS:
    """Thin wrapper over the Hadoop FileSystem of a URI (local, hdfs, s3a, ...)."""

    def __init__(self, spark: SparkSession, uri: str):
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self.fs = self._Path(uri).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(self._Path(uri)))

    def rename(self, src: str, dst: str) -> None:
        parent = self._Path(dst).getParent()
        if parent is not None:
            self.fs.mkdirs(parent)
        if not self.fs.rename(self._Path(src), self._Path(dst)):
            raise OSError(f"could not rename {src} to {dst}")

    def delete(self, uri: str) -> None:
        self.fs.delete(self._Path(uri), True)

    def list_dirs(self, uri: str) -> list[str]:
        if not self.exists(uri):
            return []
        return [s.getPath().getName() for s in self.fs.listStatus(self._Path(uri)) if s.isDirectory()]


def filesystem(spark: SparkSession, cfg: Config) -> _FS:
    """The Hadoop FileSystem holding the warehouse."""
    return _FS(spark, root_uri(cfg))


def staging_uri(cfg: Config, name: str) -> str:
    """A fresh staging location for one write of ``name``."""
    return f"{root_uri(cfg)}/_staging/{name}-{uuid.uuid4().hex[:12]}"


def swap_in(spark: SparkSession, cfg: Config, staged: str, final: str) -> None:
    """Replace ``final`` by the complete ``staged`` directory (rename, not copy)."""
    fs = filesystem(spark, cfg)
    trash = f"{root_uri(cfg)}/_trash/{uuid.uuid4().hex[:12]}"
    if fs.exists(final):
        fs.rename(final, trash)
    try:
        fs.rename(staged, final)
    except Exception:
        if fs.exists(trash):
            fs.rename(trash, final)  # put the last good version back
        raise
    if fs.exists(trash):
        fs.delete(trash)


def write_table(spark: SparkSession, cfg: Config, df: DataFrame, name: str) -> str:
    """Write ``df`` as table ``name`` atomically and register it; returns its URI."""
    staged = staging_uri(cfg, name)
    df.write.mode("errorifexists").parquet(staged)
    final = table_uri(cfg, name)
    swap_in(spark, cfg, staged, final)
    register_table(spark, cfg, name)
    return final


def read_table(spark: SparkSession, cfg: Config, name: str) -> DataFrame:
    """Read table ``name`` by path (works whether or not the catalog is reachable)."""
    uri = table_uri(cfg, name)
    if not filesystem(spark, cfg).exists(uri):
        raise FileNotFoundError(f"table '{name}' not found at {uri}: run the stage that writes it first")
    return spark.read.parquet(uri)


def ensure_database(spark: SparkSession, cfg: Config) -> str:
    """Create the catalog database once; returns its name."""
    db = cfg.warehouse.database
    if not spark.catalog.databaseExists(db):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    return db


def register_table(spark: SparkSession, cfg: Config, name: str, partitioned: bool = False) -> None:
    """(Re)register ``name`` in the catalog database pointing at its location."""
    db = ensure_database(spark, cfg)
    qualified = f"{db}.{name}"
    spark.sql(f"DROP TABLE IF EXISTS {qualified}")
    spark.sql(f"CREATE TABLE {qualified} USING parquet LOCATION '{table_uri(cfg, name)}'")
    if partitioned:
        spark.sql(f"MSCK REPAIR TABLE {qualified}")


def register_view(spark: SparkSession, cfg: Config, name: str, select_sql: str) -> None:
    """Create or replace a catalog view ``db.name`` defined by ``select_sql``."""
    db = ensure_database(spark, cfg)
    spark.sql(f"CREATE OR REPLACE VIEW {db}.{name} AS {select_sql}")


def publish_partition(spark: SparkSession, cfg: Config, df: DataFrame, name: str, dt: str,
                      validate: "Iterable" = ()) -> str:
    """Publish ``df`` as partition ``dt`` of table ``name``: stage, validate, swap, retain.

    ``validate`` holds callables taking the staged DataFrame; any exception
    they raise aborts the publish and leaves the previous partitions untouched.
    """
    staged = staging_uri(cfg, f"{name}-dt={dt}")
    df.write.mode("errorifexists").parquet(staged)
    staged_df = spark.read.parquet(staged)
    fs = filesystem(spark, cfg)
    try:
        for check in validate:
            check(staged_df)
    except Exception:
        fs.delete(staged)
        raise
    final = f"{table_uri(cfg, name)}/dt={dt}"
    swap_in(spark, cfg, staged, final)
    _apply_retention(fs, cfg, name)
    register_table(spark, cfg, name, partitioned=True)
    return final


def partitions(spark: SparkSession, cfg: Config, name: str) -> list[str]:
    """The ``dt`` values published for ``name``, oldest first."""
    dirs = filesystem(spark, cfg).list_dirs(table_uri(cfg, name))
    return sorted(d.split("=", 1)[1] for d in dirs if d.startswith("dt="))


def _apply_retention(fs: _FS, cfg: Config, name: str) -> None:
    """Delete all but the newest ``publish.retain`` partitions of ``name``."""
    base = table_uri(cfg, name)
    dts = sorted(d for d in fs.list_dirs(base) if d.startswith("dt="))
    for old in dts[: max(0, len(dts) - cfg.publish.retain)]:
        log.info("retention: removing %s/%s", name, old)
        fs.delete(f"{base}/{old}")


def put_directory(spark: SparkSession, cfg: Config, local_dir: str, name: str) -> str:
    """Copy a local directory to ``<root>/<name>`` atomically (stage, then swap)."""
    fs = filesystem(spark, cfg)
    staged = staging_uri(cfg, name.replace("/", "-"))
    fs.fs.copyFromLocalFile(False, True, fs._Path(f"file://{local_dir}"), fs._Path(staged))
    final = f"{root_uri(cfg)}/{name}"
    swap_in(spark, cfg, staged, final)
    return final


def get_directory(spark: SparkSession, cfg: Config, name: str, local_dir: str) -> str:
    """Copy ``<root>/<name>`` to a local directory; returns the local path."""
    fs = filesystem(spark, cfg)
    src = f"{root_uri(cfg)}/{name}"
    if not fs.exists(src):
        raise FileNotFoundError(f"{src} not found: run the stage that writes it first")
    fs.fs.copyToLocalFile(False, fs._Path(src), fs._Path(f"file://{local_dir}"), True)
    return local_dir
