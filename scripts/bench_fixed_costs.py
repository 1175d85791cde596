"""Benchmark: where a small nightly's time goes (README command 1: the embedded default, real ml-100k).

Runs ``dser-spark nightly`` (the embedded default) in a fresh process on a fresh
warehouse, then reads the stages' run records and prints a per-stage and a
per-step table: wall seconds, Spark jobs, rows written; what is left of the
process wall outside the stages is start-up (imports, the JVM, the catalog)
and the summary. Compares the wall with the 60 s goal and prints the DSER
metrics, so a change that saves time but moves the numbers shows.

    python scripts/bench_fixed_costs.py                  # one nightly
    python scripts/bench_fixed_costs.py --set embed.on_executor=true
    python scripts/bench_fixed_costs.py --config conf/ml-1m.yaml --goal 2700   # the whole ML-1M nightly

Also prints each model's epoch count chosen on validation (from the nightly's log,
which is removed at the end unless ``--keep``).

Last line: RESULT nightly_s=... startup_s=... <stage>_s=... spark_jobs=... dser_hr10=... dser_ndcg10=...
dser_full_hr10=... dser_full_ndcg10=... (full ranking: nan when the config does not evaluate it)
<model>_epochs=... (each model whose epochs were chosen on validation)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

GOAL_S = 60.0
STAGES = ("prepare", "sequences", "embed", "train", "evaluate", "recommend")
DT = "2026-01-01"
CHOSEN = re.compile(r"(\S+): (\d+) epochs chosen on validation \(([^)]*)\)")


def run_nightly(warehouse: Path, sets: list[str], log_path: Path, config: Path | None = None) -> float:
    """The nightly of ``config`` (default: README command 1's) in its own process; returns its wall seconds."""
    cli = Path(sys.executable).with_name("dser-spark")
    command = [str(cli), "nightly", "--dt", DT, "--set", f"warehouse.root={warehouse}",
               *(["--config", str(config)] if config else [])]
    for value in sets:
        command += ["--set", value]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    started = time.time()
    with open(log_path, "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - started
    if done.returncode:
        sys.exit(f"the nightly failed (exit {done.returncode}); its log: {log_path}\n"
                 + "".join(log_path.read_text().splitlines(True)[-30:]))
    return wall


def read_records(warehouse: Path) -> dict[str, dict]:
    """The stages' run records of the one run in ``warehouse``."""
    records = {}
    for path in sorted((warehouse / "runs").glob("*/*.json")):
        record = json.loads(path.read_text())
        records[record["stage"]] = record
    missing = [s for s in STAGES if s not in records]
    if missing:
        sys.exit(f"no run record for {missing} under {warehouse / 'runs'}")
    return records


def stage_table(records: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for stage in STAGES:
        r = records[stage]
        in_steps = sum(s["seconds"] for s in r["steps"])
        rows.append({"stage": stage, "seconds": r["seconds"], "in steps": round(in_steps, 1),
                     "spark jobs": r["spark_jobs"], "tables written": len(r["tables_written"]),
                     "rows written": sum(r["tables_written"].values())})
    return pd.DataFrame(rows)


def step_table(records: dict[str, dict]) -> pd.DataFrame:
    rows = [{"stage": stage, "step": s["step"], "seconds": s["seconds"], "spark jobs": s["spark_jobs"]}
            for stage in STAGES for s in records[stage]["steps"]]
    return pd.DataFrame(rows)


def model_metrics(warehouse: Path) -> pd.DataFrame:
    """HR@10 (Recall@10 on full ranking: one test item) and NDCG@10 of every evaluated model on each
    protocol, from the metrics table."""
    m = pd.read_parquet(warehouse / "metrics")
    m = m[(m["k"] == 10) & m["metric"].isin(["HR", "Recall", "NDCG"])]
    table = m.pivot_table(index="model", columns=["protocol", "metric"], values="value")
    return table.sort_values(table.columns[0], ascending=False)


def chosen_epochs(log_path: Path) -> pd.DataFrame:
    """Each model's epoch count chosen on validation and the validation figure it was chosen at, from the log."""
    found = [m.groups() for m in CHOSEN.finditer(log_path.read_text())]
    return pd.DataFrame([{"model": name, "epochs": int(n), "validation": val} for name, n, val in found])


def dser_metric(metrics: pd.DataFrame, protocol: str, metric: str) -> float:
    return float(metrics.loc["DSER", (protocol, metric)]) if (protocol, metric) in metrics.columns else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override passed to the nightly (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the warehouse and the log")
    ap.add_argument("--config", type=Path, help="the nightly's config (default: the embedded default, ml-100k)")
    ap.add_argument("--goal", type=float, default=GOAL_S, help="the wall goal in seconds (default: 60)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fixed-costs-"))
    warehouse, log_path = work / "warehouse", work / "nightly.log"
    print(f"nightly on {args.config or 'the embedded default (real ml-100k)'}, sets {args.sets or 'none'}; "
          f"log {log_path}", flush=True)
    wall = run_nightly(warehouse, args.sets, log_path, args.config)
    records = read_records(warehouse)
    stages, steps, metrics = stage_table(records), step_table(records), model_metrics(warehouse)
    epochs = chosen_epochs(log_path)
    startup = wall - stages["seconds"].sum()
    pd.set_option("display.width", 160)
    print("\nper stage (seconds: the stage's wall; in steps: the part timed by its named steps)")
    print(stages.to_string(index=False))
    print(f"{'start-up, catalog, summary':>26}: {startup:.1f} s outside the stages")
    print("\nper step")
    print(steps.to_string(index=False))
    print("\nmetrics at 10 (test item)")
    print(metrics.round(4).to_string())
    if not epochs.empty:
        print("\nepochs chosen on validation")
        print(epochs.to_string(index=False))
    print(f"\nnightly wall {wall:.1f} s = {wall / args.goal:.2f} x the {args.goal:.0f} s goal")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    per_stage = " ".join(f"{r.stage}_s={r.seconds:.1f}" for r in stages.itertuples())
    print(f"RESULT nightly_s={wall:.1f} startup_s={startup:.1f} {per_stage} "
          f"spark_jobs={int(stages['spark jobs'].sum())} "
          f"dser_hr10={dser_metric(metrics, 'sampled', 'HR'):.4f} "
          f"dser_ndcg10={dser_metric(metrics, 'sampled', 'NDCG'):.4f} "
          f"dser_full_hr10={dser_metric(metrics, 'full', 'Recall'):.4f} "
          f"dser_full_ndcg10={dser_metric(metrics, 'full', 'NDCG'):.4f}"
          + "".join(f" {r.model.lower()}_epochs={r.epochs}" for r in epochs.itertuples()))


if __name__ == "__main__":
    main()
