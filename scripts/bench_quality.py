#!/usr/bin/env python
"""Quality table of DSER and its baselines on real MovieLens (NCF protocol + full ranking).

    scripts/bench_quality.py --dataset ml-1m [--seeds 42 43 44] [--workdir /tmp/dser-bench]

Each seed runs prepare -> sequences -> embed -> train -> evaluate in its own
process and warehouse (the seed also draws the split's sampled negatives).
Every choice is made on the validation item with a train-only fit; each model
is refit on train + validation and scored once on test (see DESIGN.md).
The full baseline set (ItemPop, Recency, ALS tuned on validation, GMF, MLP,
NeuMF) runs for the first seed; the other seeds run DSER, NeuMF, Recency and
ItemPop, giving mean ± spread for those. Prints Markdown tables and ends with
``RESULT dser_hr10=… dser_ndcg10=… dser_full_recall10=… neumf_hr10=… als_hr10=… recent_hr10=…``
(means over seeds).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"ml-1m": ROOT / "conf" / "ml-1m.yaml", "ml-100k": ROOT / "conf" / "default.yaml"}
FULL = ["ItemPop", "Recency", "ALS", "GMF", "MLP", "NeuMF"]
LIGHT = ["ItemPop", "Recency", "NeuMF"]
# ml-100k runs the same model as conf/ml-1m-doc2vec.yaml (the defaults), with the ALS grid and baselines on
ML100K = ["evaluate.als_ranks=[32, 64]", "evaluate.als_regs=[0.01, 0.1]", "train.epochs=15",
          "train.lr=0.001"]


def overrides(dataset: str, seed: int, workdir: Path, baselines: list[str], extra: list[str]) -> list[str]:
    root = workdir / dataset / f"seed{seed}"
    out = [f"seed={seed}", f"warehouse.root={root}", f"warehouse.metastore={root / 'metastore_db'}",
           "train.refit_all=false", "train.show_progress=false", "train.reuse_model=false",
           f"evaluate.baselines=[{', '.join(baselines)}]"]
    return out + (ML100K if dataset == "ml-100k" else []) + extra


STAGES = ("prepare", "sequences", "embed", "train", "evaluate")


def run_one(config: Path, sets: list[str], out: Path, first: str = "prepare") -> None:
    """One seed, in this process: the stages ``first`` .. evaluate, timings to ``out``."""
    from dser_spark import pipeline, runs, tables
    from dser_spark.config import load_config
    from dser_spark.logs import setup_logging
    from dser_spark.session import build_session, stop_session

    setup_logging()
    cfg = load_config(config, sets)
    spark = build_session(cfg)
    dt, timings = "2026-01-01", {}
    try:
        for stage in STAGES[STAGES.index(first):]:
            started = time.time()
            pipeline.run_stage(spark, cfg, stage, dt)
            timings[stage] = time.time() - started
        metrics = spark.read.parquet(tables.table_uri(cfg, "metrics")).toPandas()
        metrics = metrics[metrics.run_id == runs.run_id(cfg, dt)]
        metrics.to_csv(out.with_suffix(".csv"), index=False)
        out.write_text(json.dumps({"timings": timings}))
    finally:
        stop_session(spark)


def summarise(frames: list[pd.DataFrame], k: int = 10) -> tuple[pd.DataFrame, dict]:
    """Mean ± spread (half the min-max range) per model and metric over seeds."""
    allm = pd.concat(frames, ignore_index=True)
    allm["column"] = [f"{p} {m}" + ("" if m == "MRR" else f"@{kk}") for p, m, kk in
                      zip(allm.protocol, allm.metric, allm.k)]
    g = allm.groupby(["model", "column"])["value"]
    stats = pd.DataFrame({"mean": g.mean(), "spread": (g.max() - g.min()) / 2, "n": g.count()}).reset_index()
    return stats, {}


def table(stats: pd.DataFrame, columns: list[str], order: list[str]) -> str:
    lines = ["| model | seeds | " + " | ".join(columns) + " |", "| --- | ---: |" + " ---: |" * len(columns)]
    for model in order:
        sub = stats[stats.model == model].set_index("column")
        if sub.empty:
            continue
        cells = []
        for c in columns:
            if c in sub.index:
                m, s, n = sub.loc[c, "mean"], sub.loc[c, "spread"], sub.loc[c, "n"]
                cells.append(f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}")
            else:
                cells.append("")
        lines.append(f"| {model} | {int(sub['n'].max())} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(CONFIGS), default="ml-1m")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dser-bench"))
    ap.add_argument("--config", type=Path, help="the config (default: conf/ml-1m.yaml, the attention encoder, for "
                                                "ml-1m; conf/default.yaml for ml-100k)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra config override")
    ap.add_argument("--reuse", action="store_true", help="reuse finished seeds' metrics in --workdir")
    ap.add_argument("--light", action="store_true", help="light baselines for every seed (not the full set first)")
    ap.add_argument("--light-baselines", nargs="+", default=LIGHT, help="baselines of the seeds after the first")
    ap.add_argument("--from-stage", choices=STAGES, default="prepare",
                    help="resume a seed whose warehouse already holds the earlier stages' tables")
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--sets", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(Path(args.one[0]), args.sets, Path(args.one[1]), args.from_stage)
        return 0
    frames, timings = [], {}
    for n, seed in enumerate(args.seeds):
        baselines = FULL if n == 0 and not args.light else args.light_baselines
        sets = overrides(args.dataset, seed, args.workdir, baselines, args.extra)
        out = args.workdir / args.dataset / f"seed{seed}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not (args.reuse and out.is_file() and out.with_suffix(".csv").is_file()):
            started = time.time()
            cmd = [sys.executable, __file__, "--one", str(args.config or CONFIGS[args.dataset]), str(out),
                   "--from-stage", args.from_stage, "--sets", *sets]
            print(f"seed {seed}: running ({' '.join(sets)})", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
            print(f"seed {seed}: done in {time.time() - started:.0f}s", file=sys.stderr, flush=True)
        frames.append(pd.read_csv(out.with_suffix(".csv")).assign(seed=seed))
        timings[seed] = json.loads(out.read_text())["timings"]
    stats, _ = summarise(frames)
    order = ["DSER", "SASRec", "Recency", "NeuMF", "ALS", "GMF", "MLP", "ItemPop"]
    print(f"## {args.dataset}: test metrics, mean ± spread (half the min-max range) over seeds {args.seeds}\n")
    print("Sampled protocol (test item among 99 sampled negatives):\n")
    print(table(stats, [f"sampled {m}@{k}" for m in ("HR", "NDCG") for k in (5, 10, 20)], order))
    print("\nFull ranking (all items not in the user's fit history):\n")
    print(table(stats, ["full Recall@10", "full NDCG@10", "full Recall@20", "full NDCG@20", "full MRR",
                        "full Coverage@10"], order))
    print("\nStage wall times (s) per seed:\n")
    print(pd.DataFrame(timings).T.round(0).to_string())

    def mean(model: str, column: str) -> float:
        sub = stats[(stats.model == model) & (stats.column == column)]
        return float(sub["mean"].iloc[0]) if len(sub) else float("nan")

    print("RESULT " + " ".join([
        f"dser_hr10={mean('DSER', 'sampled HR@10'):.4f}", f"dser_ndcg10={mean('DSER', 'sampled NDCG@10'):.4f}",
        f"dser_full_recall10={mean('DSER', 'full Recall@10'):.4f}",
        f"dser_full_ndcg10={mean('DSER', 'full NDCG@10'):.4f}", f"sasrec_hr10={mean('SASRec', 'sampled HR@10'):.4f}",
        f"sasrec_full_recall10={mean('SASRec', 'full Recall@10'):.4f}",
        f"neumf_hr10={mean('NeuMF', 'sampled HR@10'):.4f}", f"als_hr10={mean('ALS', 'sampled HR@10'):.4f}",
        f"recent_hr10={mean('Recency', 'sampled HR@10'):.4f}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
