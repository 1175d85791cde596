"""Run records: every stage run leaves ``runs/<run_id>/<stage>.json`` under the warehouse.

A record says when the stage started and ended, how it ended (``ok``,
``failed`` with the error, or ``refused`` by the quality gate), the rows of
every table it read and wrote, the config, the package version and the model
it used. The run id is the date and a hash of the whole config; re-running a
stage for the same date and config replaces its record (``attempt`` counts).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Iterator

from pyspark.sql import SparkSession

from dser_spark import tables
from dser_spark.config import Config

log = logging.getLogger("dser_spark")

ROOT = "runs"


def run_id(cfg: Config, dt: str) -> str:
    """Deterministic id of a run: the date and a hash of the whole config."""
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{dt}-{digest}"


def record_name(cfg: Config, dt: str, stage: str) -> str:
    """Warehouse-relative path of a stage's record."""
    return f"{ROOT}/{run_id(cfg, dt)}/{stage}.json"


def package_version() -> str:
    try:
        return metadata.version("dser-spark")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a clone without install
        return "unknown"


@dataclass
class StageRecord:
    """What one stage run did; tables note their reads and writes into the active record."""

    stage: str
    dt: str
    run_id: str
    read: set[str] = field(default_factory=set)
    written: dict[str, int] = field(default_factory=dict)
    details: dict = field(default_factory=dict)   # stage-specific: model used, rejected rows, ...
    steps: list[dict] = field(default_factory=list)  # {"step", "seconds", "spark_jobs"} in the order they ended

    def note_read(self, name: str) -> None:
        self.read.add(name)

    def note_written(self, name: str, rows: int) -> None:
        self.written[name] = self.written.get(name, 0) + rows


def _job_group(spark: SparkSession, group: str) -> None:
    spark.sparkContext.setJobGroup(group, group)


def _jobs(spark: SparkSession, group: str) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))


@contextlib.contextmanager
def step(spark: SparkSession, name: str) -> Iterator[None]:
    """Time one step of the running stage (wall seconds, Spark jobs) into its record's ``steps``."""
    record = tables.ACTIVITY.get()
    if record is None:
        yield
        return
    group, started = f"dser:{record.run_id}:{record.stage}:{name}", time.time()
    outer = spark.sparkContext.getLocalProperty("spark.jobGroup.id") or _stage_group(record)
    _job_group(spark, group)
    try:
        yield
    finally:
        _job_group(spark, outer)
        record.steps.append({"step": name, "seconds": round(time.time() - started, 2),
                             "spark_jobs": _jobs(spark, group)})


def _stage_group(record: StageRecord) -> str:
    return f"dser:{record.run_id}:{record.stage}"


class GateRefused(RuntimeError):
    """The quality gate kept the published partitions as they were."""


@contextlib.contextmanager
def recorded(spark: SparkSession, cfg: Config, stage: str, dt: str) -> Iterator[StageRecord]:
    """Run a stage inside a record, written when it ends however it ends."""
    record = StageRecord(stage, dt, run_id(cfg, dt))
    previous = tables.read_json(spark, cfg, record_name(cfg, dt, stage)) or {}
    started, token = time.time(), tables.ACTIVITY.set(record)
    status, error = "ok", None
    _job_group(spark, _stage_group(record))
    try:
        yield record
    except GateRefused as exc:
        status, error = "refused", str(exc)
        raise
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        tables.ACTIVITY.reset(token)
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
        _write(spark, cfg, record, previous, started, status, error)


def _write(spark: SparkSession, cfg: Config, record: StageRecord, previous: dict, started: float, status: str,
           error: str | None) -> None:
    ended = time.time()
    body = {
        "run_id": record.run_id, "stage": record.stage, "dt": record.dt, "status": status, "error": error,
        "started": _iso(started), "ended": _iso(ended), "seconds": round(ended - started, 1),
        "attempt": previous.get("attempt", 0) + 1,
        "tables_read": {name: tables.row_count(spark, cfg, name) for name in sorted(record.read)},
        "tables_written": dict(sorted(record.written.items())),
        "steps": record.steps,
        "spark_jobs": _jobs(spark, _stage_group(record)) + sum(s["spark_jobs"] for s in record.steps),
        **record.details,
        "spark_master": spark.sparkContext.master, "package_version": package_version(), "config": cfg.to_dict(),
    }
    try:
        location = tables.write_json(spark, cfg, record_name(cfg, record.dt, record.stage), body)
        log.info("run record: %s", location)
    except Exception as exc:  # a record must never hide the stage's own outcome
        log.warning("could not write the run record of %s: %s", record.stage, exc)


def _iso(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat(timespec="seconds")
