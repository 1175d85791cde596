"""Shared fixtures: one local SparkSession for the whole test session."""
from __future__ import annotations

from pathlib import Path

import pytest

from dser_spark.config import Config, load_config
from dser_spark.session import build_session


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A real local[2] session with a throw-away Derby metastore."""
    meta = tmp_path_factory.mktemp("metastore") / "metastore_db"
    cfg = load_config(None, [
        "spark.master=local[2]",
        "spark.conf.spark.sql.shuffle.partitions=4",
        "spark.conf.spark.driver.memory=2g",
        "spark.class_cache=",  # the suite's own JVM neither starts from nor records a class archive
        f"warehouse.metastore={meta}",
        f"warehouse.root={meta.parent / 'unused'}",
    ])
    session = build_session(cfg)
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a Config whose warehouse is a fresh temporary directory."""

    def make(*overrides: str) -> Config:
        return load_config(None, [f"warehouse.root={tmp_path / 'warehouse'}",
                                  "train.show_progress=false", *overrides])

    return make


@pytest.fixture(scope="session")
def ml100k_nightlies(spark, tmp_path_factory):
    """The real ml-100k nightly, in this session and on local-cluster with a packed env (tests/nightlies.py)."""
    from nightlies import run

    return run(spark, tmp_path_factory.mktemp("ml100k"))
