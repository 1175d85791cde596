"""Command line: ``dser-spark <stage> [--config FILE] [--set key=value ...] [--dt YYYY-MM-DD]``."""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import sys
from pathlib import Path

from dser_spark.config import ConfigError, load_config

log = logging.getLogger("dser_spark")

COMMANDS = ("prepare", "sequences", "embed", "train", "evaluate", "recommend", "nightly")
DEFAULT_CONFIG = "conf/default.yaml"


def _date(text: str) -> str:
    try:
        return _dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dt must be YYYY-MM-DD, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dser-spark", description="DSER batch recommender on Spark")
    p.add_argument("stage", choices=COMMANDS, help="stage to run (nightly = all, in order)")
    p.add_argument("--config", default=None,
                   help=f"YAML config (default: {DEFAULT_CONFIG} if present, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--dt", type=_date, default=_dt.date.today().isoformat(),
                   help="run date YYYY-MM-DD (default: today)")
    return p


def _config_path(arg: str | None) -> str | None:
    if arg is not None:
        return arg
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("gensim", "py4j", "smart_open"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(_config_path(args.config), args.overrides)
    except ConfigError as exc:
        print(f"dser-spark: config error: {exc}", file=sys.stderr)
        return 2
    from dser_spark import pipeline
    from dser_spark.prepare import DataError
    from dser_spark.session import build_session
    from dser_spark.tables import ValidationError

    spark = build_session(cfg)
    try:
        if args.stage == "nightly":
            print(summary(cfg, args.dt, pipeline.run_nightly(spark, cfg, args.dt)))
        else:
            result = pipeline.run_stage(spark, cfg, args.stage, args.dt)
            print(f"{args.stage} done: {result if not hasattr(result, 'to_string') else result.to_string()}")
    except (DataError, FileNotFoundError, ValidationError) as exc:
        print(f"dser-spark: {args.stage} failed: {exc}", file=sys.stderr)
        return 1
    return 0


def summary(cfg, dt: str, run: dict) -> str:
    """The short report printed at the end of ``nightly``."""
    from dser_spark.tables import table_uri

    metrics = run["results"]["evaluate"]
    k = cfg.evaluate.k
    lines = [f"dser-spark nightly dt={dt} run_id={run['run_id']} finished in {run['seconds']:.0f}s",
             f"  users scored: {run['results']['recommend']['users']}"]
    for model in metrics["model"].unique():
        m = metrics[(metrics["model"] == model) & (metrics["k"] == k)].set_index("metric")["value"]
        lines.append(f"  {model:8s} HR@{k} {m['HR']:.4f}  NDCG@{k} {m['NDCG']:.4f}")
    lines += [f"  recommendations: {run['results']['recommend']['location']}",
              f"  tables under:    {table_uri(cfg, '')}",
              f"  query: SELECT user_id, rank, item_id, score FROM {cfg.warehouse.database}.recommendations "
              f"WHERE dt = '{dt}' AND user_id = 1 ORDER BY rank"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
