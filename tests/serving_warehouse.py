"""A small published warehouse for the dashboard and API tests, written by the real writers.

Two nights of ``recommendations`` (``partitioned.publish``), ``items``,
``interactions`` and ``metrics`` (``tables.write_table``) and a stored model
with its manifest (``models.store``). ``expected`` reads the same tables back
with pyarrow, independently of ``dser_spark.serving``, for the assertions.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from dser_spark import models, partitioned, tables
from dser_spark.artifacts import Trained
from dser_spark.config import Config, ModelConfig, load_config
from dser_spark.model import DSER, Inputs

DAY1, DAY2, DAY3 = "2026-05-01", "2026-05-02", "2026-05-03"
USERS = [1, 2, 3, 4, 5, 6, 1001]       # with interactions; 7 gets popular items only
K = 6
N_ITEMS = 30
MODEL_ID = "dser-fixture000001"


def config(root: Path) -> Config:
    return load_config(None, [f"warehouse.root={root}", "publish.retain=7"])


def _model(spark, cfg: Config, dt: str) -> None:
    """A random 2-layer DSER over the fixture's users and items, stored as ``MODEL_ID``."""
    g = torch.Generator().manual_seed(0)
    users = len(USERS)
    inputs = Inputs(torch.randn(users, 8, generator=g), torch.randn(users, 2, 8, generator=g),
                    torch.randn(N_ITEMS, 8, generator=g), torch.randn(N_ITEMS, 8, generator=g),
                    torch.randn(N_ITEMS, 4, generator=g), torch.tensor([3, 1]))
    model = DSER(inputs, ModelConfig(gmf_dim=6, mlp_layers=[12, 5])).eval()
    trained = Trained(model, np.array(USERS), np.arange(1, N_ITEMS + 1))
    models.store(spark, cfg, MODEL_ID, {"serve": trained}, {"seed": 0}, dt)


def interactions() -> pd.DataFrame:
    """Users' ratings: user u rates 3 + u % 5 items, one a day, ratings in half stars."""
    rows = []
    for n, u in enumerate(USERS):
        for j in range(3 + u % 5):
            ts = 1_600_000_000 + n * 10 ** 6 + j * 86_400
            rows.append((u, (u * 7 + j * 3) % N_ITEMS + 1, 0.5 + (u + j) % 10 * 0.5, ts))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "t"])


def recommendations(dt: str) -> pd.DataFrame:
    """K items per user not rated by them; the second night shifts every list by one item."""
    seen = interactions().groupby("user_id")["item_id"].apply(set).to_dict()
    shift = {DAY1: 0, DAY2: 1, DAY3: 2}[dt]
    rows = []
    for u in [*USERS, 7]:
        free = [i for i in range(1, N_ITEMS + 1) if i not in seen.get(u, set())]
        picked = free[(u + shift) % 5:][:K]
        source = "popular" if u == 7 else "inferred" if u == 6 else "model"
        rows += [(u, r, i, round(1.0 - r / 10 - shift / 100, 4), source, MODEL_ID) for r, i in enumerate(picked, 1)]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "source", "model_run_id"])


def publish(spark, cfg: Config, dt: str) -> None:
    schema = "user_id int, rank int, item_id int, score float, source string, model_run_id string"
    partitioned.publish(spark, cfg, spark.createDataFrame(recommendations(dt), schema), "recommendations", dt)


def build(spark, root: Path) -> Path:
    """Write the fixture warehouse under ``root`` (once per test session: reused when complete)."""
    if (root / "recommendations" / partitioned.MANIFEST).is_file():
        return root
    cfg = config(root)
    items = [(i, "Amélie — l'ünïcode" if i == 7 else f"Film {i}", None if i == 13 else 1990 + i,
              [["Drama"], ["Comedy", "Drama"], [], ["Horror"]][i % 4]) for i in range(1, N_ITEMS + 1)]
    tables.write_table(spark, cfg, spark.createDataFrame(items, "item_id int, title string, year int, "
                                                                "genres array<string>"), "items")
    ratings = spark.createDataFrame(interactions(), "user_id int, item_id int, rating float, t long")
    tables.write_table(spark, cfg, ratings.selectExpr("user_id", "item_id", "rating", "timestamp_seconds(t) AS ts"),
                       "interactions")
    metrics = [(f"{dt}-run", dt, MODEL_ID, model, protocol, metric, k, value + n / 100)
               for n, dt in enumerate((DAY1, DAY2)) for model, value in (("DSER", 0.7), ("ItemPop", 0.3))
               for protocol, metric in (("sampled", "HR"), ("sampled", "NDCG"), ("full", "Recall"))
               for k in (5, 10)]
    tables.write_table(spark, cfg, spark.createDataFrame(metrics, "run_id string, dt string, model_id string, "
                       "model string, protocol string, metric string, k int, value double"), "metrics")
    _model(spark, cfg, DAY1)
    for dt in (DAY1, DAY2):
        publish(spark, cfg, dt)
    return root


def expected(root: Path) -> dict:
    """The fixture's tables read back with pyarrow (published files only): recs by dt, history, items."""
    recs = {dt: pq.read_table(files).to_pandas().sort_values(["user_id", "rank"])
            for dt, files in partitioned.published_files(root / "recommendations").items()}
    history = pq.read_table(sorted(str(p) for p in (root / "interactions").glob("*.parquet"))).to_pandas()
    items = pq.read_table(sorted(str(p) for p in (root / "items").glob("*.parquet"))).to_pandas()
    return {"recs": recs, "history": history.sort_values(["user_id", "ts"], ascending=[True, False]),
            "items": items.set_index("item_id"), "manifest": json.loads((root / "models" / MODEL_ID /
                                                                          "manifest.json").read_text())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], url: str, cwd: Path, timeout: float = 90.0) -> subprocess.Popen:
    """Start a server process (its output in ``cwd/server.log``) and wait until ``url`` answers."""
    import httpx

    log = cwd / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            httpx.get(url, timeout=2.0)
            return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    stop(proc)
    raise TimeoutError(f"{url} did not answer within {timeout}s:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cli(*args: str) -> list[str]:
    """``dser-spark ARGS`` as run from a checkout (the installed entry point's module)."""
    return [sys.executable, "-m", "dser_spark.cli", *args]
