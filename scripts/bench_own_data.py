#!/usr/bin/env python3
"""Benchmark: your own data against the built-in reader, on the same real ml-100k.

Runs README command 1's nightly (the embedded default, baselines ItemPop) with
the built-in reader, then re-exports its ``interactions`` and ``items`` as
Parquet the way a data engineer's tables look (renamed columns, user ids as
strings ``u196``, times in epoch milliseconds, the items as a metadata table
with a list column) and runs the same nightly through ``data.format: parquet``
and a column mapping. Both in one Spark session, each on a fresh warehouse
under ``--work``. The goal (issue 15): the same DSER HR@10 within 0.02.

    python scripts/bench_own_data.py

Last line: RESULT builtin_hr10=... own_hr10=... diff=... builtin_s=... own_s=...
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dser_spark import pipeline, tables  # noqa: E402
from dser_spark.config import load_config  # noqa: E402
from dser_spark.session import build_session  # noqa: E402

DT = "2026-01-01"
SETS = ["evaluate.baselines=[ItemPop]", "train.show_progress=false"]
COLUMNS = "{user: viewer, item: film, rating: stars, ts: seen_at}"
ITEM_COLUMNS = "{item: film, title: name, categories: kinds}"


def export(spark, cfg, out: Path) -> None:
    """The built-in night's interactions and items as Parquet with a data engineer's names and types."""
    inter = tables.read_table(spark, cfg, "interactions").toPandas()
    items = tables.read_table(spark, cfg, "items").toPandas()
    epoch_ms = (inter.ts - pd.Timestamp("1970-01-01")) // pd.Timedelta("1ms")
    events = pd.DataFrame({"viewer": "u" + inter.user_id.astype(str), "film": inter.item_id.astype("int64"),
                           "stars": inter.rating, "seen_at": epoch_ms})
    (out / "events").mkdir(parents=True)
    (out / "movies").mkdir(parents=True)
    half = len(events) // 2
    events.iloc[:half].to_parquet(out / "events" / "part-0.parquet", index=False)
    events.iloc[half:].to_parquet(out / "events" / "part-1.parquet", index=False)
    pd.DataFrame({"film": items.item_id.astype("int64"), "name": items.title, "kinds": items.genres}) \
        .to_parquet(out / "movies" / "part-0.parquet", index=False)


def metrics(spark, cfg) -> dict[str, float]:
    """Sampled HR@10 and NDCG@10 of DSER."""
    m = spark.read.parquet(tables.table_uri(cfg, "metrics")).toPandas()
    m = m[(m.model == "DSER") & (m.protocol == "sampled") & (m.k == 10)]
    return dict(zip(m.metric, m.value.astype(float)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "dser-bench-own-data"))
    args = p.parse_args(argv)
    work = Path(args.work).absolute()
    shutil.rmtree(work, ignore_errors=True)
    builtin = load_config(REPO / "conf" / "default.yaml", [*SETS, f"warehouse.root={work / 'builtin'}"])
    spark = build_session(builtin)
    began = time.perf_counter()
    pipeline.run_nightly(spark, builtin, DT)
    builtin_s = time.perf_counter() - began
    export(spark, builtin, work / "export")
    own = load_config(REPO / "conf" / "default.yaml", [
        *SETS, "data.format=parquet", f"data.path={work / 'export' / 'events'}", f"data.columns={COLUMNS}",
        f"data.items={work / 'export' / 'movies'}", f"data.item_columns={ITEM_COLUMNS}",
        f"warehouse.root={work / 'own'}", "warehouse.database=dser_own"])
    began = time.perf_counter()
    pipeline.run_nightly(spark, own, DT)
    own_s = time.perf_counter() - began
    a, b = metrics(spark, builtin), metrics(spark, own)
    print("| reader | DSER HR@10 | DSER NDCG@10 | nightly s |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| built-in (recbole ml-100k) | {a['HR']:.4f} | {a['NDCG']:.4f} | {builtin_s:.1f} |")
    print(f"| parquet + data.columns, string users, epoch ms | {b['HR']:.4f} | {b['NDCG']:.4f} | {own_s:.1f} |")
    print(f"RESULT builtin_hr10={a['HR']:.4f} own_hr10={b['HR']:.4f} diff={b['HR'] - a['HR']:+.4f} "
          f"builtin_s={builtin_s:.1f} own_s={own_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
