"""Tables partitioned by ``dt``, published by pointer: safe on any filesystem, also where rename is a copy.

Layout of a table ``<root>/<name>/``::

    dt=2026-11-25/20261125T020312-3f9c1a7b/part-*.parquet, _SUCCESS    one version of a night
    _published.json    {"table", "latest", "partitions": [{"dt", "path", "location", "rows", "published_at"}]}

A night is written to a new version directory and validated there; then the
manifest (one small file, replaced in one step) and the catalog partition
(``ALTER TABLE ... PARTITION (dt=...) SET LOCATION``) are pointed at it, and
only then are older versions deleted. Readers through the catalog or through
the manifest never see a half-written partition, whatever the filesystem (on
s3a a rename is a copy and not atomic; nothing here renames a directory). A
failed or killed run leaves the previous versions, and the pointers to them,
as they were; its own leftovers are removed by the next publish of the table.
Reading the directory tree by a glob is not safe: a version being written is
there too. Path readers (DuckDB, pyarrow) read the manifest (``scripts/queries.sql``,
``published_files``).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import uuid
from pathlib import Path
from typing import Callable, Iterable

from pyspark.sql import DataFrame, SparkSession

from dser_spark import tables
from dser_spark.config import Config
from dser_spark.tables import PARTITION

log = logging.getLogger("dser_spark")

MANIFEST = "_published.json"


def manifest(spark: SparkSession, cfg: Config, name: str) -> dict:
    """The table's manifest of complete partitions (empty before the first publish).

    A table published before manifests existed (``dt=<dt>/part-*.parquet``,
    swapped in by rename) is adopted as it is: each such directory is a partition.
    """
    found = tables.read_json(spark, cfg, f"{name}/{MANIFEST}")
    if found is not None:
        return found
    fs, table = tables.filesystem(spark, cfg), tables.table_uri(cfg, name)
    legacy = sorted(d for d in fs.list_dirs(table)
                    if d.startswith(f"{PARTITION}=") and fs.exists(f"{table}/{d}/_SUCCESS"))
    parts = [{PARTITION: d.split("=", 1)[1], "path": d, "location": f"{table}/{d}", "rows": None,
              "published_at": None} for d in legacy]
    return {"table": name, "latest": parts[-1][PARTITION] if parts else None, "partitions": parts}


def partitions(spark: SparkSession, cfg: Config, name: str) -> list[str]:
    """The published ``dt`` values of ``name``, oldest first."""
    return sorted(p[PARTITION] for p in manifest(spark, cfg, name)["partitions"])


def location(spark: SparkSession, cfg: Config, name: str, dt: str) -> str:
    """URI of the complete version of partition ``dt``."""
    for part in manifest(spark, cfg, name)["partitions"]:
        if part[PARTITION] == dt:
            return part["location"]
    raise FileNotFoundError(f"{name}: no published partition {PARTITION}={dt} (published: "
                            f"{', '.join(partitions(spark, cfg, name)) or 'none'})")


def read(spark: SparkSession, cfg: Config, name: str) -> DataFrame | None:
    """Every published partition of ``name`` with its ``dt`` column (None before the first publish)."""
    from pyspark.sql import functions as F

    parts = manifest(spark, cfg, name)["partitions"]
    if not parts:
        return None
    frames = [spark.read.parquet(p["location"]).withColumn(PARTITION, F.lit(p[PARTITION])) for p in parts]
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def publish(spark: SparkSession, cfg: Config, df: DataFrame, name: str, dt: str,
            validate: Iterable[Callable[[DataFrame], None]] = ()) -> str:
    """Publish ``df`` as partition ``dt`` of ``name``: write a new version, validate it, point the manifest
    and the catalog at it, then remove what nothing points to and apply ``publish.retain``.

    ``validate`` holds callables taking the written DataFrame; any exception
    they raise aborts the publish and leaves every published partition as it was.
    """
    fs = tables.filesystem(spark, cfg)
    version = f"{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    path = f"{PARTITION}={dt}/{version}"
    uri = f"{tables.table_uri(cfg, name)}/{path}"
    try:
        rows = tables.write_parquet(df, uri)
        written = spark.read.parquet(uri)
        for check in validate:
            check(written)
    except BaseException:
        fs.delete(uri)
        raise
    current = manifest(spark, cfg, name)
    entry = {PARTITION: dt, "path": path, "location": uri, "rows": rows,
             "published_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    kept = sorted([p for p in current["partitions"] if p[PARTITION] != dt] + [entry], key=lambda p: p[PARTITION])
    dropped, kept = kept[:max(0, len(kept) - cfg.publish.retain)], kept[-cfg.publish.retain:]
    tables.write_json(spark, cfg, f"{name}/{MANIFEST}",
                      {"table": name, "latest": kept[-1][PARTITION], "partitions": kept})
    _point_catalog(spark, cfg, name, written.schema, kept, dt, [p[PARTITION] for p in dropped])
    _remove_unreferenced(spark, cfg, name, {p["path"] for p in kept})
    record = tables.ACTIVITY.get()
    if record is not None:
        record.note_written(name, rows)
    return uri


def _point_catalog(spark: SparkSession, cfg: Config, name: str, schema, kept: list[dict], new_dt: str,
                   dropped: list[str]) -> None:
    """The catalog table's partitions: each kept ``dt`` at its version (the others are added only where the
    catalog lacks them, e.g. a new metastore), ``new_dt`` moved to its new version, the dropped ones gone."""
    qualified = f"{tables.ensure_database(spark, cfg)}.{name}"
    tables.register_table(spark, cfg, name, schema, partitioned=True)
    for part in kept:
        spec = f"PARTITION ({PARTITION}='{part[PARTITION]}')"
        spark.sql(f"ALTER TABLE {qualified} ADD IF NOT EXISTS {spec} LOCATION '{part['location']}'")
        if part[PARTITION] == new_dt:
            spark.sql(f"ALTER TABLE {qualified} {spec} SET LOCATION '{part['location']}'")
    for dt in dropped:
        log.info("retention: removing %s %s=%s", name, PARTITION, dt)
        spark.sql(f"ALTER TABLE {qualified} DROP IF EXISTS PARTITION ({PARTITION}='{dt}')")
    spark.sql(f"REFRESH TABLE {qualified}")


def _remove_unreferenced(spark: SparkSession, cfg: Config, name: str, referenced: set[str]) -> None:
    """Delete every version directory the manifest does not point to (older versions, dropped nights,
    leftovers of killed runs), and partition directories left empty."""
    fs, table = tables.filesystem(spark, cfg), tables.table_uri(cfg, name)
    for night in fs.list_dirs(table):
        if not night.startswith(f"{PARTITION}=") or night in referenced:  # an adopted legacy partition
            continue
        versions = fs.list_dirs(f"{table}/{night}")
        for version in versions:
            if f"{night}/{version}" not in referenced:
                fs.delete(f"{table}/{night}/{version}")
        if not any(f"{night}/{v}" in referenced for v in versions):
            fs.delete(f"{table}/{night}")


def published_files(table_dir: str | Path) -> dict[str, list[str]]:
    """For path readers without Spark: ``dt`` -> the Parquet files of its complete version, read from a
    local table directory's manifest."""
    table_dir = Path(table_dir)
    path = table_dir / MANIFEST
    if not path.is_file():
        return {}
    parts = json.loads(path.read_text())["partitions"]
    return {p[PARTITION]: sorted(str(f) for f in (table_dir / p["path"]).glob("*.parquet")) for p in parts}
