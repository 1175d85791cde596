"""Warehouse tables: Parquet directories under ``warehouse.root``, and the filesystem and catalog under them.

Every path is a URI handled through the Hadoop FileSystem API (``file://``,
``hdfs://``, ``s3a://`` alike). A table write goes to a staging directory
(``<root>/_staging``, outside every table) and is renamed into place only when
complete, so a failed or killed run never leaves a half-written table, and
path readers never see staged files. Replacing an existing directory takes two
renames (old one aside into ``<root>/_trash``, new one in); a run killed between
them is undone by the next swap of the same path. (Renames are atomic on local
disks and HDFS; the published, ``dt``-partitioned tables do not rely on them:
see ``partitioned``.)

Each table is also registered in the Spark catalog database (``dser``, created
at ``warehouse.root``): created once, re-created only when its schema or
location changes, so the catalog never goes through a moment without the table.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from typing import Callable, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from dser_spark.config import Config

T = TypeVar("T")
log = logging.getLogger("dser_spark")

PARTITION = "dt"

# the running stage's record (``runs.StageRecord``): tables note what they read and write into it
ACTIVITY: ContextVar = ContextVar("dser_table_activity", default=None)


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


class HadoopFS:
    """Thin wrapper over the Hadoop FileSystem of a URI (local, hdfs, s3a, ...)."""

    def __init__(self, spark: SparkSession, uri: str):
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self._io = jvm.org.apache.commons.io.IOUtils
        conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.fs = self._Path(uri).getFileSystem(conf)
        self._context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(self._Path(uri).toUri(), conf)
        self._overwrite = spark.sparkContext._gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
        self._overwrite[0] = jvm.org.apache.hadoop.fs.Options.Rename.OVERWRITE

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(self._Path(uri)))

    def rename(self, src: str, dst: str) -> None:
        parent = self._Path(dst).getParent()
        if parent is not None:
            self.fs.mkdirs(parent)
        if not self.fs.rename(self._Path(src), self._Path(dst)):
            raise OSError(f"could not rename {src} to {dst}")

    def replace(self, src: str, dst: str) -> None:
        """Rename file ``src`` over ``dst`` in one step (readers see the old or the new file)."""
        self._context.rename(self._Path(src), self._Path(dst), self._overwrite)

    def delete(self, uri: str) -> None:
        self.fs.delete(self._Path(uri), True)

    def list_dirs(self, uri: str) -> list[str]:
        if not self.exists(uri):
            return []
        return [s.getPath().getName() for s in self.fs.listStatus(self._Path(uri)) if s.isDirectory()]

    def write_bytes(self, uri: str, data: bytes) -> None:
        stream = self.fs.create(self._Path(uri), True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def read_bytes(self, uri: str) -> bytes:
        stream = self.fs.open(self._Path(uri))
        try:
            return bytes(self._io.toByteArray(stream))
        finally:
            stream.close()

    def is_dir(self, uri: str) -> bool:
        """Whether ``uri`` is an existing directory."""
        path = self._Path(uri)
        return bool(self.fs.exists(path) and self.fs.getFileStatus(path).isDirectory())

    def list_files(self, uri: str) -> dict[str, int]:
        """Name -> size in bytes of each file directly in directory ``uri``."""
        return {s.getPath().getName(): int(s.getLen())
                for s in self.fs.listStatus(self._Path(uri)) if s.isFile()}

    def read_first_line(self, uri: str, limit: int, chunk: int = 1 << 16) -> bytes:
        """Line 1 of file ``uri`` with its ``\\n`` (at most ``limit`` bytes); the rest is not read."""
        stream = self.fs.open(self._Path(uri))
        try:
            head = b""
            while b"\n" not in head and len(head) < limit:
                data = bytes(stream.readNBytes(min(chunk, limit - len(head))))
                if not data:
                    break
                head += data
        finally:
            stream.close()
        end = head.find(b"\n")
        return head[:end + 1] if end >= 0 else head

    def copy_from_local(self, local_path: str, uri: str) -> None:
        """Copy a file of the driver's disk to ``uri`` (overwriting it)."""
        self.fs.copyFromLocalFile(False, True, self._Path(f"file://{local_path}"), self._Path(uri))


def filesystem(spark: SparkSession, cfg: Config) -> HadoopFS:
    """The Hadoop FileSystem holding the warehouse."""
    return HadoopFS(spark, root_uri(cfg))


def _staging_root(cfg: Config) -> str:
    return f"{root_uri(cfg)}/_staging"


def staging_uri(cfg: Config, name: str) -> str:
    """A fresh staging location for one write of ``name``."""
    return f"{_staging_root(cfg)}/{name}-{uuid.uuid4().hex[:12]}"


def _clear_staging(fs: HadoopFS, cfg: Config, name: str) -> None:
    """Remove staging leftovers of earlier killed writes of ``name``."""
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{12}$")
    for entry in fs.list_dirs(_staging_root(cfg)):
        if pattern.match(entry):
            fs.delete(f"{_staging_root(cfg)}/{entry}")


def _trash_dir(cfg: Config, final: str) -> str:
    """Where the previous version of ``final`` waits during a swap."""
    return f"{root_uri(cfg)}/_trash/{final[len(root_uri(cfg)) + 1:]}"


def restore_interrupted(fs: HadoopFS, cfg: Config, final: str) -> None:
    """Undo swaps of ``final`` (or of its partitions) killed between their two renames.

    The previous version waits in the trash: put it back where the new one never arrived.
    """
    trash = _trash_dir(cfg, final)
    for entry in fs.list_dirs(trash):
        if entry.startswith(f"{PARTITION}="):
            restore_interrupted(fs, cfg, f"{final}/{entry}")
        elif not fs.exists(final):
            log.warning("restoring %s from an interrupted swap", final)
            fs.rename(f"{trash}/{entry}", final)
    fs.delete(trash)


def swap_in(spark: SparkSession, cfg: Config, staged: str, final: str) -> None:
    """Replace ``final`` by the complete ``staged`` directory (renames, not copies)."""
    fs = filesystem(spark, cfg)
    restore_interrupted(fs, cfg, final)
    trash = f"{_trash_dir(cfg, final)}/{uuid.uuid4().hex[:12]}"
    if fs.exists(final):
        fs.rename(final, trash)
    try:
        fs.rename(staged, final)
    except Exception:
        if fs.exists(trash):
            fs.rename(trash, final)  # put the last good version back
        raise
    fs.delete(_trash_dir(cfg, final))


def write_parquet(df: DataFrame, uri: str) -> int:
    """Write ``df`` as Parquet at a new ``uri``; returns its row count, observed during the write itself."""
    observed = Observation()
    df.observe(observed, F.count(F.lit(1)).alias("rows")).write.mode("errorifexists").parquet(uri)
    return int(observed.get["rows"])


def _stage(spark: SparkSession, cfg: Config, df: DataFrame, label: str) -> tuple[str, int]:
    """Write ``df`` to a fresh staging directory; returns it and the row count."""
    fs = filesystem(spark, cfg)
    _clear_staging(fs, cfg, label)
    staged = staging_uri(cfg, label)
    try:
        rows = write_parquet(df, staged)
    except BaseException:
        fs.delete(staged)
        raise
    return staged, rows


def write_table(spark: SparkSession, cfg: Config, df: DataFrame, name: str) -> str:
    """Write ``df`` as table ``name`` atomically and register it; returns its URI."""
    final = table_uri(cfg, name)
    fs = filesystem(spark, cfg)
    restore_interrupted(fs, cfg, final)
    staged, rows = _stage(spark, cfg, df, name)
    swap_in(spark, cfg, staged, final)
    register_table(spark, cfg, name, df.schema)  # the catalog keeps the column types, as Parquet does
    _DERIVED[(final, ROWS)] = (_signature(fs, final), rows)
    record = ACTIVITY.get()
    if record is not None:
        record.note_written(name, rows)
    return final


def _signature(fs: HadoopFS, uri: str) -> tuple:
    """What changes whenever a table is rewritten: its files' names (unique per write) and sizes."""
    return tuple(sorted(fs.list_files(uri).items()))


# (table URI, what) -> (the table's signature, value): driver-side results derived from a table (its
# rows among them), computed at most once per version of the table in this process (the stages of a
# nightly share them)
_DERIVED: dict[tuple[str, str], tuple[tuple, object]] = {}
ROWS = "rows"


def _once_per_version(fs: HadoopFS, uri: str, what: str, compute: Callable[[], T]) -> T:
    """``compute()``, remembered under (``uri``, ``what``) until the table at ``uri`` is rewritten."""
    signature = _signature(fs, uri)
    known = _DERIVED.get((uri, what))
    if known is None or known[0] != signature:
        known = _DERIVED[(uri, what)] = (signature, compute())
    return known[1]


def derived(spark: SparkSession, cfg: Config, name: str, what: str, compute: Callable[[DataFrame], T]) -> T:
    """``compute(table)``, remembered under ``what`` until table ``name`` is rewritten. Callers must not
    modify what it returns."""
    df = read_table(spark, cfg, name)
    return _once_per_version(filesystem(spark, cfg), table_uri(cfg, name), what, lambda: compute(df))


def collect(spark: SparkSession, cfg: Config, name: str, columns: list[str]) -> pd.DataFrame:
    """``columns`` of table ``name`` on the driver, collected at most once per version of the table."""
    return derived(spark, cfg, name, "columns " + ",".join(columns), lambda df: df.select(*columns).toPandas())


def aligned_rows(table: pa.Table, key: str, column: str, ids: np.ndarray, what: str) -> np.ndarray:
    """(len(ids), d) float32: the list column ``column`` of ``table`` at each id's ``key`` row, zeros where
    an id has none. ``what`` names the rows in the error raised when there are none at all."""
    if table.num_rows == 0:
        raise ValueError(f"{what} has no rows: run the embed stage first")
    keys = table.column(key).to_numpy()
    flat = pc.list_flatten(table.column(column)).to_numpy().astype(np.float32)
    out = np.zeros((len(ids), len(flat) // len(keys)), dtype=np.float32)
    pos = pd.Index(keys).get_indexer(ids)
    found = pos >= 0
    out[found] = flat.reshape(len(keys), -1)[pos[found]]
    return out


def row_count(spark: SparkSession, cfg: Config, name: str) -> int | None:
    """Rows of table ``name`` as it is now, None if it is gone; counted once per version of the table."""
    uri, fs = table_uri(cfg, name), filesystem(spark, cfg)
    if not fs.exists(uri):
        return None
    return _once_per_version(fs, uri, ROWS, lambda: spark.read.parquet(uri).count())


def read_table(spark: SparkSession, cfg: Config, name: str) -> DataFrame:
    """Read table ``name`` by path (works whether or not the catalog is reachable)."""
    uri = table_uri(cfg, name)
    if not filesystem(spark, cfg).exists(uri):
        raise FileNotFoundError(f"table '{name}' not found at {uri}: run the stage that writes it first")
    if ACTIVITY.get() is not None:
        ACTIVITY.get().note_read(name)
    return spark.read.parquet(uri)


def drop_table(spark: SparkSession, cfg: Config, name: str) -> None:
    """Remove table ``name`` from the catalog and the warehouse, if it is there."""
    spark.sql(f"DROP TABLE IF EXISTS {ensure_database(spark, cfg)}.{name}")
    _CATALOG.pop((spark.sparkContext.applicationId, "table", f"{cfg.warehouse.database}.{name}"), None)
    fs, uri = filesystem(spark, cfg), table_uri(cfg, name)
    if fs.exists(uri):
        log.info("removing table %s at %s", name, uri)
        fs.delete(uri)


# what this process already made sure of in the catalog of a Spark application: databases, and each
# table's (location, columns); saves metastore round trips on every write
_CATALOG: dict[tuple, object] = {}


def ensure_database(spark: SparkSession, cfg: Config) -> str:
    """Create the catalog database once; returns its name."""
    db = cfg.warehouse.database
    key = (spark.sparkContext.applicationId, "database", db)
    if key not in _CATALOG:
        if not spark.catalog.databaseExists(db):
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {db} LOCATION '{root_uri(cfg)}'")
        _CATALOG[key] = True
    return db


def _plain(uri: str) -> str:
    """A location without its file: scheme spelling (file:/x, file:///x -> /x)."""
    return re.sub(r"^file:/+", "/", uri.rstrip("/"))


def _columns(schema: StructType, partitioned: bool) -> list[tuple[str, str]]:
    if not partitioned:
        return [(f.name, f.dataType.simpleString()) for f in schema]
    return [(f.name, f.dataType.simpleString()) for f in schema if f.name != PARTITION] + [(PARTITION, "string")]


def _registered_as(spark: SparkSession, qualified: str, location: str, columns: list[tuple[str, str]]) -> bool:
    """Whether the catalog already has ``qualified`` at ``location`` with these columns."""
    if not spark.catalog.tableExists(qualified):
        return False
    info = {r[0]: r[1] for r in spark.sql(f"DESCRIBE TABLE EXTENDED {qualified}").collect()}
    current = [(f.name, f.dataType.simpleString()) for f in spark.table(qualified).schema]
    return _plain(info.get("Location") or "") == _plain(location) and current == columns


def register_table(spark: SparkSession, cfg: Config, name: str, schema: StructType,
                   partitioned: bool = False) -> None:
    """Make ``db.name`` point at the table's location (created only if missing or changed)."""
    db = ensure_database(spark, cfg)
    qualified, location = f"{db}.{name}", table_uri(cfg, name)
    columns = _columns(schema, partitioned)
    key = (spark.sparkContext.applicationId, "table", qualified)
    if _CATALOG.get(key) == (location, columns) or _registered_as(spark, qualified, location, columns):
        spark.sql(f"REFRESH TABLE {qualified}")
    else:
        ddl = ", ".join(f"`{c}` {t}" for c, t in columns)
        spark.sql(f"DROP TABLE IF EXISTS {qualified}")
        spark.sql(f"CREATE TABLE {qualified} ({ddl}) USING parquet "
                  f"{f'PARTITIONED BY ({PARTITION}) ' if partitioned else ''}LOCATION '{location}'")
    _CATALOG[key] = (location, columns)


def ensure_registered(spark: SparkSession, cfg: Config, name: str) -> None:
    """Register table ``name`` from its files if this session's catalog does not know it yet (another
    process, or an in-memory catalog, may have written it)."""
    if not spark.catalog.tableExists(f"{ensure_database(spark, cfg)}.{name}"):
        register_table(spark, cfg, name, read_table(spark, cfg, name).schema)


def register_view(spark: SparkSession, cfg: Config, name: str, select_sql: str) -> None:
    """Create or replace a catalog view ``db.name`` defined by ``select_sql``."""
    db = ensure_database(spark, cfg)
    spark.sql(f"CREATE OR REPLACE VIEW {db}.{name} AS {select_sql}")


def write_json(spark: SparkSession, cfg: Config, name: str, value: dict) -> str:
    """Write ``<root>/<name>`` as JSON in one step (a temporary file renamed over it); returns its URI."""
    fs, final = filesystem(spark, cfg), f"{root_uri(cfg)}/{name}"
    tmp = f"{final}.{uuid.uuid4().hex[:12]}.tmp"
    fs.write_bytes(tmp, json.dumps(value, indent=1, sort_keys=True, default=str).encode())
    fs.replace(tmp, final)
    return final


def read_json(spark: SparkSession, cfg: Config, name: str) -> dict | None:
    """``<root>/<name>`` parsed, or None when it does not exist."""
    fs, uri = filesystem(spark, cfg), f"{root_uri(cfg)}/{name}"
    return json.loads(fs.read_bytes(uri)) if fs.exists(uri) else None


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
