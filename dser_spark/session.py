"""SparkSession set-up: works on a fresh machine with nothing set by hand, and defers to spark-submit.

What spark-submit set (``--master``, ``--conf``) wins over the config: when the
driver was started by spark-submit, its JVM is already running and holds those
settings, so they are read from it before the session is built. The
conveniences of a one-machine run (executors use this interpreter, Spark binds
to loopback, an embedded Derby metastore and a local warehouse directory) apply
only to ``local*`` masters; on a cluster its own settings (hive-site.xml,
spark-defaults.conf, ``spark.pyspark.python``) are left alone.

A driver JVM that Python starts on a local master also starts from a class-data-sharing
(AppCDS) archive in ``spark.class_cache``, mapping Spark's classes instead of loading and
verifying them again (``ClassArchive``). The CLI's first run records it: its JVM writes
the classes it loaded as it exits (``stop_session``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.errors import PySparkRuntimeError
from pyspark.sql import SparkSession

from dser_spark.config import Config
from dser_spark.logs import quiet_libraries

log = logging.getLogger("dser_spark")

LOG4J = Path(__file__).with_name("log4j2.properties")
METASTORE_KEYS = ("spark.hadoop.javax.jdo.option.ConnectionURL", "spark.hadoop.hive.metastore.uris",
                  "hive.metastore.uris")
JAVA_OPTIONS = "spark.driver.extraJavaOptions"
ARCHIVE = "spark-driver-"  # file name prefix of the class archives in spark.class_cache
ARCHIVE_WAIT_S = 120  # how long stop_session waits for a recording JVM to write its archive and exit
ARCHIVE_KEEP_DAYS = 30  # other archives (another venv, java or Spark) not started from for this long are removed


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


@dataclass(frozen=True)
class ClassArchive:
    """The driver JVM's class-data-sharing archive for one java and one Spark class path.

    The JVM starts from ``path`` when it exists, and must use it (``-Xshare:on``): an
    archive it cannot use (damaged, or another java or class path) stops it at start, and
    ``build_session`` starts it again without. Otherwise the JVM records the classes it
    loaded into ``part`` as it exits, and ``stop_session`` renames ``part`` to ``path``;
    a JVM that is killed leaves a stale part, removed by a later run.
    """

    path: Path
    part: Path | None = None

    def java_option(self) -> str:
        if self.part:  # quiet: the dump lists every class it cannot keep (generated, signed jars) as a warning
            return f"-XX:ArchiveClassesAtExit={self.part} -Xlog:cds=off,cds+dynamic=off"
        return f"-XX:SharedArchiveFile={self.path} -Xshare:on -XX:ErrorFile={self.path.parent}/hs_err_pid%p.log"


_recording: ClassArchive | None = None  # the archive this process's driver JVM records as it exits


def _java() -> Path | None:
    """The java spark-submit runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home, "bin", "java")) if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).is_file() else None


def _class_path_key(java: Path, extra_class_path: str) -> str:
    """A name for what an archive depends on: the java binary, Spark's jars (where they are, too: the class
    path is checked by path) and the extra class path."""
    from pyspark import __version__
    from pyspark.find_spark_home import _find_spark_home

    jars = Path(_find_spark_home(), "jars").resolve()
    parts = [__version__, str(java), str(java.stat().st_size), str(java.stat().st_mtime_ns), extra_class_path,
             str(jars)]
    parts += [f"{jar.name}:{jar.stat().st_size}" for jar in sorted(jars.glob("*.jar"))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove_stale_parts(directory: Path) -> None:
    """Parts whose recording process is gone (killed before it could rename its archive)."""
    for part in directory.glob(f"{ARCHIVE}*.part"):
        pid = part.stem.rsplit(".", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            part.unlink(missing_ok=True)


def _remove_unused_archives(directory: Path, kept: Path) -> None:
    """Archives but ``kept`` that no run has started from for ``ARCHIVE_KEEP_DAYS`` (an old java or Spark)."""
    oldest = time.time() - ARCHIVE_KEEP_DAYS * 86400
    for old in directory.glob(f"{ARCHIVE}*.jsa"):
        if old != kept and old.stat().st_mtime < oldest:
            old.unlink(missing_ok=True)


def class_archive(cache: str, extra_class_path: str = "", record: bool = False) -> ClassArchive | None:
    """The archive in ``cache`` to start from, or, with ``record``, to record if there is none yet (None: off, no
    java, nothing to start from and not recording, or the directory cannot be written)."""
    java = _java()
    if not cache or java is None:
        return None
    directory = Path(cache).expanduser()
    key = _class_path_key(java, extra_class_path)
    path = directory / f"{ARCHIVE}{key}.jsa"
    if path.is_file():
        os.utime(path)  # started from: see _remove_unused_archives
        return ClassArchive(path)
    if not record:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(directory)
    except OSError as e:
        log.warning("spark.class_cache %s: %s; the driver JVM starts without a class archive", cache, e)
        return None
    return ClassArchive(path, directory / f"{ARCHIVE}{key}.{os.getpid()}.part")


@dataclass
class SessionPlan:
    """What ``build_session`` sets: the master (None: spark-submit's), settings, environment, class archive."""

    master: str | None
    settings: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    class_archive: ClassArchive | None = None


def plan(cfg: Config, submitted: dict[str, str], record_classes: bool = False) -> SessionPlan:
    """The session's settings for ``cfg``; keys spark-submit set are left to it. ``record_classes``: a local
    driver JVM with no class archive to start from records one (see ``stop_session``)."""
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
    archive = None
    if is_local(master) and not submitted and JAVA_OPTIONS not in settings:
        archive = class_archive(cfg.spark.class_cache, settings.get("spark.driver.extraClassPath", ""),
                                record_classes)
        java_opts += [archive.java_option()] if archive else []
    settings.setdefault(JAVA_OPTIONS, " ".join(java_opts))
    return SessionPlan(None if "spark.master" in submitted else master,
                       {k: v for k, v in settings.items() if k not in submitted}, environment, archive)


def build_session(cfg: Config, record_classes: bool = False) -> SparkSession:
    """Create (or reuse) the session; spark-submit's --master/--conf win over ``cfg``. With ``record_classes``
    (the CLI, which stops it with ``stop_session``), a new local driver JVM records a class archive if there
    is none to start from."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    p = plan(cfg, submitted_conf(), record_classes)
    for key, value in p.environment.items():
        os.environ.setdefault(key, value)
    if "spark.hadoop.javax.jdo.option.ConnectionURL" in p.settings:
        Path(metastore_dir(cfg)).parent.mkdir(parents=True, exist_ok=True)
    try:
        spark = _start(cfg, p)
    except PySparkRuntimeError:
        archive = p.class_archive
        if archive is None or archive.part is not None:
            raise
        spark = _start(cfg, plan(replace(cfg, spark=replace(cfg.spark, class_cache="")), {}))  # the archive off
        log.warning("spark: the driver JVM could not start from the class archive %s (damaged, or made for another "
                    "java or Spark) but starts without it; the archive is removed and the next run records a new "
                    "one", archive.path)
        archive.path.unlink(missing_ok=True)
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    quiet_libraries()
    log.info("spark: master %s, %d cores by default", spark.sparkContext.master,
             spark.sparkContext.defaultParallelism)
    return spark


def _start(cfg: Config, p: SessionPlan) -> SparkSession:
    """The session of plan ``p``; notes the class archive its JVM records, if it starts one that does."""
    global _recording
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    if p.master is not None:
        builder = builder.master(p.master)
    for key, value in p.settings.items():
        builder = builder.config(key, value)
    if SparkContext._gateway is None and p.class_archive is not None:
        _recording = p.class_archive if p.class_archive.part else None
        log.info("spark: driver JVM %s the class archive %s", "records" if _recording else "starts from",
                 p.class_archive.path)
    return builder.getOrCreate()


def stop_session(spark: SparkSession) -> None:
    """Stop ``spark``. A driver JVM that records a class archive exits now, and its archive is kept."""
    global _recording
    spark.stop()
    archive, _recording = _recording, None
    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if archive is None or archive.part is None or proc is None:
        return
    started = time.monotonic()
    gateway.close()
    SparkContext._gateway = SparkContext._jvm = None  # a later session in this process starts a new JVM
    proc.stdin.close()  # the gateway JVM exits when Python's end of its stdin closes
    try:
        code = proc.wait(timeout=ARCHIVE_WAIT_S)
    except subprocess.TimeoutExpired:
        log.warning("spark: the driver JVM did not exit within %d s; no class archive kept", ARCHIVE_WAIT_S)
        return
    if code != 0 or not archive.part.is_file() or archive.part.stat().st_size == 0:
        log.warning("spark: the driver JVM exited with %d and no whole class archive; none kept", code)
        archive.part.unlink(missing_ok=True)  # a partial archive would crash the JVM that maps it
        return
    os.replace(archive.part, archive.path)
    _remove_unused_archives(archive.path.parent, archive.path)
    log.info("spark: the driver JVM's classes are kept in %s (%.0f MB, %.1f s): later runs start faster",
             archive.path, archive.path.stat().st_size / 2**20, time.monotonic() - started)
