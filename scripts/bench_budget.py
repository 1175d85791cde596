#!/usr/bin/env python
"""Wall time of one ML-1M DSER train of 20 epochs + evaluate, against the 10-minute budget.

    scripts/bench_budget.py [--epochs 20] [--threads 2] [--workdir /tmp/dser-bench-budget]

prepare, sequences and embed run first (not timed; reused when ``--workdir``
already holds them). Timed: the ``train`` stage as one fit of ``--epochs``
epochs on train + validation (no early stopping, no selection fit, no serving
refit) and the ``evaluate`` stage for DSER alone (sampled and full ranking on
the test item). Prints a table; last line
``RESULT train_s=… evaluate_s=… total_s=… budget_s=600 epoch_s=…``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dser_spark import pipeline, tables  # noqa: E402
from dser_spark.config import load_config  # noqa: E402
from dser_spark.logs import setup_logging  # noqa: E402
from dser_spark.session import build_session, stop_session  # noqa: E402

DT = "2026-01-01"


def have(spark, cfg, table: str) -> bool:
    """Whether the warehouse already holds ``table`` (from an earlier run in the same workdir)."""
    try:
        tables.read_table(spark, cfg, table)
        return True
    except FileNotFoundError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the fit")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dser-bench-budget"))
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    setup_logging()
    root = args.workdir / "ml-1m"
    cfg = load_config(ROOT / "conf" / "ml-1m-doc2vec.yaml", [
        f"warehouse.root={root}", f"warehouse.metastore={root / 'metastore_db'}", "train.refit_all=false",
        "train.select_epochs=false", "train.patience=0", f"train.epochs={args.epochs}", "train.reuse_model=false",
        f"train.threads={args.threads}", "train.show_progress=false", "evaluate.baselines=[]", *args.extra])
    spark = build_session(cfg)
    try:
        for stage, output in (("prepare", "interactions"), ("sequences", "sequences"),
                              ("embed", "item_seq_vectors")):
            if not have(spark, cfg, output):
                pipeline.run_stage(spark, cfg, stage, DT)
        timed = {}
        for stage in ("train", "evaluate"):
            started = time.time()
            result = pipeline.run_stage(spark, cfg, stage, DT)
            timed[stage] = time.time() - started
        metrics = result[result["model"] == "DSER"].set_index(["metric", "k"])["value"]
    finally:
        stop_session(spark)
    total = sum(timed.values())
    print(f"\n| stage | seconds |\n| --- | ---: |\n| train ({args.epochs} epochs, {args.threads} threads) | "
          f"{timed['train']:.0f} |\n| evaluate (DSER, sampled + full) | {timed['evaluate']:.0f} |\n"
          f"| total | {total:.0f} (budget 600) |")
    if len(metrics):
        print(f"DSER after {args.epochs} epochs: HR@10 {metrics.get(('HR', 10), float('nan')):.4f}")
    print(f"RESULT train_s={timed['train']:.1f} evaluate_s={timed['evaluate']:.1f} total_s={total:.1f} budget_s=600 "
          f"epoch_s={timed['train'] / args.epochs:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
