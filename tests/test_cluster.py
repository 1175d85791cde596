"""A real cluster on one machine: the README's spark-submit command, with the environment packed by
scripts/pack_env.sh, runs the whole nightly on local-cluster[2,1,1024], survives an injected task failure,
and publishes exactly what a local[2] run with the same seed publishes (the run: tests/nightlies.py)."""
import json
from pathlib import Path

import pandas as pd
import pytest

from dser_spark import partitioned, tables
from nightlies import CLUSTER, DT

pytestmark = pytest.mark.slow


def _published(cfg) -> pd.DataFrame:
    table = tables.table_uri(cfg, "recommendations").removeprefix("file://")
    files = partitioned.published_files(table)[DT]
    return pd.concat([pd.read_parquet(f) for f in files]).sort_values(["user_id", "rank"]).reset_index(drop=True)


def _metrics(cfg) -> pd.DataFrame:
    files = sorted(Path(tables.table_uri(cfg, "metrics").removeprefix("file://")).glob("*.parquet"))
    cols = ["model_id", "model", "protocol", "metric", "k", "value"]
    return pd.concat([pd.read_parquet(f) for f in files])[cols].sort_values(cols[:5]).reset_index(drop=True)


def test_spark_submit_on_local_cluster_with_the_packed_env_equals_local(ml100k_nightlies):
    run = ml100k_nightlies
    assert run.returncode == 0, run.stderr[-5000:] + run.stdout[-3000:]
    root = Path(tables.root_uri(run.cluster).removeprefix("file://"))
    records = [json.loads(p.read_text()) for p in (root / "runs").glob("*/*.json")]
    assert len(records) == 6 and {r["spark_master"] for r in records} == {CLUSTER}  # spark-submit's master won
    assert "InjectedFailure" in run.stderr and "DSER_INJECT_FAILURE=recommend" in run.stderr  # a task failed ...
    assert "Failed to launch executor" not in run.stderr  # the application stopped before the cluster did
    ours, theirs = _published(run.cluster), _published(run.local)  # ... was retried, and nothing changed
    key = ["user_id", "rank", "item_id", "source", "model_run_id"]
    pd.testing.assert_frame_equal(ours[key], theirs[key])
    assert (ours.score - theirs.score).abs().max() < 1e-6
    pd.testing.assert_frame_equal(_metrics(run.cluster), _metrics(run.local))
    assert len(ours) == 9430
    assert (root / "_sources" / "builtin-ml-100k" / "ml-100k.inter").is_file()  # executors read the warehouse
