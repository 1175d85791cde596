"""A small published warehouse for the dashboard and API tests, written by the real writers.

Two nights of ``recommendations`` (``partitioned.publish``), ``items``,
``interactions`` and ``metrics`` (``tables.write_table``) and a stored model
with its manifest (``models.store``). ``expected`` reads the same tables back
with pyarrow, independently of ``dser_spark.serving``, for the assertions.

``build(..., own_ids=True)`` writes the warehouse of your own data instead:
string user ids (UUID-like) and string item ids (SKUs) in ``user_ids`` /
``item_ids``, dense ids in ``interactions`` and ``items``, and the
recommendations published with the source's ids, as ``prepare`` and
``publish`` write them for ``data.format: parquet``.
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


def user_source_id(u: int) -> str:
    """A UUID-like id whose order differs from the dense ids' (so a missed mapping shows)."""
    return f"{(u * 7919) % 10007:04x}c1e-9b2d-4c3a-8e1f-{u:012d}"


def item_source_id(i: int) -> str:
    """A SKU whose order differs from the dense ids'."""
    return f"BK-{(i * 37) % 101:05d}-X"


def source_ids(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its dense ``user_id`` / ``item_id`` replaced by the source's ids."""
    return df.assign(**{c: df[c].map(f) for c, f in (("user_id", user_source_id), ("item_id", item_source_id))
                        if c in df})


def publish(spark, cfg: Config, dt: str, own_ids: bool = False) -> None:
    recs = recommendations(dt)
    kind = "string" if own_ids else "int"
    schema = f"user_id {kind}, rank int, item_id {kind}, score float, source string, model_run_id string"
    partitioned.publish(spark, cfg, spark.createDataFrame(source_ids(recs) if own_ids else recs, schema),
                        "recommendations", dt)


def _id_maps(spark, cfg: Config) -> None:
    """``user_ids`` and ``item_ids`` as prepare writes them for your own data."""
    for name, key, ids, to_source in (("user_ids", "user_id", [*USERS, 7], user_source_id),
                                      ("item_ids", "item_id", range(1, N_ITEMS + 1), item_source_id)):
        rows = [(i, to_source(i)) for i in ids]
        tables.write_table(spark, cfg, spark.createDataFrame(rows, f"{key} int, source_id string"), name)


def build(spark, root: Path, own_ids: bool = False) -> Path:
    """Write the fixture warehouse under ``root`` (once per test session: reused when complete)."""
    if (root / "recommendations" / partitioned.MANIFEST).is_file():
        return root
    cfg = config(root)
    items = [(i, "Amélie — l'ünïcode" if i == 7 else f"Film {i}", None if i == 13 else 1990 + i,
              [["Drama"], ["Comedy", "Drama"], [], ["Horror"]][i % 4], item_source_id(i))
             for i in range(1, N_ITEMS + 1)]
    items = spark.createDataFrame(items, "item_id int, title string, year int, genres array<string>, raw_id string")
    tables.write_table(spark, cfg, items if own_ids else items.drop("raw_id"), "items")
    if own_ids:
        _id_maps(spark, cfg)
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
        publish(spark, cfg, dt, own_ids)
    return root


def _table(root: Path, name: str) -> pd.DataFrame:
    return pq.read_table(sorted(str(p) for p in (root / name).glob("*.parquet"))).to_pandas()


def expected(root: Path) -> dict:
    """The fixture's tables read back with pyarrow (published files only): recs by dt, history, items; with the
    source's ids (mapped with pandas through ``user_ids`` / ``item_ids`` for your own data)."""
    recs = {dt: pq.read_table(files).to_pandas().sort_values(["user_id", "rank"])
            for dt, files in partitioned.published_files(root / "recommendations").items()}
    history, items = _table(root, "interactions"), _table(root, "items")
    if (root / "user_ids").is_dir():
        maps = {key: _table(root, f"{key}s").set_index(key)["source_id"] for key in ("user_id", "item_id")}
        history = history.assign(user_id=history["user_id"].map(maps["user_id"]),
                                 item_id=history["item_id"].map(maps["item_id"]))
        items = items.assign(item_id=items["item_id"].map(maps["item_id"])).drop(columns="raw_id")
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
