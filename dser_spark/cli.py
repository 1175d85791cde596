"""Command line: ``dser-spark <stage> [--config FILE] [--set key=value ...] [--dt YYYY-MM-DD]``,
and ``dser-spark config`` (the effective configuration, every key documented)."""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import logging
import sys
import threading
from pathlib import Path

from dser_spark.config import Config, ConfigError, annotated_yaml, load_config, markdown_table
from dser_spark.logs import setup_logging

log = logging.getLogger("dser_spark")

STAGES = ("prepare", "sequences", "embed", "train", "evaluate", "recommend", "nightly")
# exit codes a scheduler can act on
EXIT_OK = 0                # done (for recommend / nightly: published)
EXIT_DATA_FAILURE = 1      # bad data, a missing input or a failed check: nothing published
EXIT_BAD_ARGUMENTS = 2     # bad config or arguments (incl. a dt retention would delete at once)
EXIT_GATE_REFUSED = 3      # the quality gate refused the new model: latest unchanged
DEFAULT_CONFIG = "conf/default.yaml"


def _date(text: str) -> str:
    try:
        return _dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dt must be YYYY-MM-DD, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None,
                        help=f"YAML config (default: {DEFAULT_CONFIG} if present, else built-in defaults)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    p = argparse.ArgumentParser(prog="dser-spark", description="DSER batch recommender on Spark")
    commands = p.add_subparsers(dest="command", required=True, metavar="command")
    for stage in STAGES:
        sub = commands.add_parser(stage, parents=[common],
                                  help="every stage in order" if stage == "nightly" else f"the {stage} stage")
        sub.add_argument("--dt", type=_date, default=_dt.date.today().isoformat(),
                         help="run date YYYY-MM-DD (default: today)")
        if stage in ("evaluate", "recommend", "nightly"):
            sub.add_argument("--model", default=None, metavar="MODEL_ID",
                             help="use this model (default: the one trained for --dt, else models/_latest)")
        if stage in ("recommend", "nightly"):
            sub.add_argument("--force", action="store_true", help="publish even if the quality gate refuses")
        if stage == "nightly":
            sub.add_argument("--from-stage", choices=STAGES[:-1], default="prepare",
                             help="resume at this stage; the earlier stages' outputs must be complete")
    config = commands.add_parser("config", parents=[common],
                                 help="print the effective config as YAML, every key with its meaning")
    config.add_argument("--markdown", action="store_true", help="print the reference table of all keys instead")
    for name, what, port in (("dashboard", "the dashboard (Streamlit) over the published tables", "dashboard_port"),
                             ("serve", "the read-only HTTP API (FastAPI) over the published tables", "api_port")):
        surface = commands.add_parser(name, parents=[common], help=what)
        surface.add_argument("--host", default=None, help="address to listen on (default: serving.host, 127.0.0.1)")
        surface.add_argument("--port", type=int, default=None, help=f"port (default: serving.{port})")
    return p


def _config_path(arg: str | None) -> str | None:
    if arg is not None:
        return arg
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(_config_path(args.config), args.overrides)
    except ConfigError as exc:
        print(f"dser-spark: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    if args.command == "config":
        print(markdown_table() if args.markdown else annotated_yaml(cfg), end="")
        return 0
    if args.command in ("dashboard", "serve"):
        from dser_spark.serving.launch import run

        return run(cfg, args.command, args.host, args.port)
    return run_stage_command(cfg, args)


def run_stage_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run one stage or the nightly and map the outcome to the exit code (see EXIT_CODES).

    The stages' modules (torch, gensim: seconds of imports) load in a thread while the JVM starts.
    """
    loading = threading.Thread(target=importlib.import_module, args=("dser_spark.pipeline",), daemon=True)
    loading.start()
    from pyspark.sql import SparkSession

    from dser_spark.session import build_session, stop_session

    ours = SparkSession.getActiveSession() is None  # in tests, the session's own is reused and left running
    spark = build_session(cfg, record_classes=True)
    try:
        loading.join()
        return _run_stage(spark, cfg, args)
    finally:  # unregister from the master before the JVM exits: on local-cluster, an application still
        if ours:  # registered at shutdown sets the workers relaunching executors, and the exit can hang
            stop_session(spark)


def _run_stage(spark, cfg: Config, args: argparse.Namespace) -> int:
    """The stage (or nightly) named by ``args`` on ``spark``, its outcome as an exit code."""
    from dser_spark import pipeline
    from dser_spark.prepare import DataError
    from dser_spark.publish import BackfillRefused
    from dser_spark.runs import GateRefused
    from dser_spark.tables import ValidationError

    stage, dt = args.command, args.dt
    opts = pipeline.Options(model=getattr(args, "model", None), force=getattr(args, "force", False),
                            from_stage=getattr(args, "from_stage", "prepare"))
    try:
        if stage == "nightly":
            print(summary(cfg, dt, pipeline.run_nightly(spark, cfg, dt, opts)))
        else:
            result = pipeline.run_stage(spark, cfg, stage, dt, opts)
            print(f"{stage} done: {result if not hasattr(result, 'to_string') else result.to_string()}")
    except BackfillRefused as exc:
        print(f"dser-spark: {stage} refused: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    except GateRefused as exc:
        print(f"dser-spark: {stage}: {exc}", file=sys.stderr)
        return EXIT_GATE_REFUSED
    except (DataError, FileNotFoundError, ValidationError) as exc:
        print(f"dser-spark: {stage} failed: {exc}", file=sys.stderr)
        return EXIT_DATA_FAILURE
    return EXIT_OK


def summary(cfg: Config, dt: str, run: dict) -> str:
    """The short report printed at the end of ``nightly``."""
    from dser_spark.tables import table_uri

    results, k = run["results"], cfg.evaluate.k
    lines = [f"dser-spark nightly dt={dt} run_id={run['run_id']} finished in {run['seconds']:.0f}s",
             f"  model: {results['recommend']['model_id']}",
             f"  users scored: {results['recommend']['users']}"]
    metrics = results.get("evaluate")
    for model in [] if metrics is None else metrics["model"].unique():
        m = metrics[(metrics["model"] == model) & (metrics["k"] == k)].set_index("metric")["value"]
        lines.append(f"  {model:8s} HR@{k} {m['HR']:.4f}  NDCG@{k} {m['NDCG']:.4f}")
    lines += [f"  recommendations: {results['recommend']['location']}",
              f"  tables under:    {table_uri(cfg, '')}",
              f"  run records:     {run['records']}",
              f"  query: SELECT user_id, rank, item_id, score FROM {cfg.warehouse.database}.recommendations "
              f"WHERE dt = '{dt}' AND user_id = {_sql_literal(results['recommend'].get('example_user', 1))} "
              f"ORDER BY rank"]
    return "\n".join(lines)


def _sql_literal(value) -> str:
    """A user id as SQL: numbers as they are, strings quoted."""
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(value)


if __name__ == "__main__":
    sys.exit(main())
