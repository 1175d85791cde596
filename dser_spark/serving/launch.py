"""``dser-spark dashboard`` and ``dser-spark serve``: start either surface on the configured warehouse."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from dser_spark.config import Config
from dser_spark.serving.store import local_root

log = logging.getLogger("dser_spark")

APP = Path(__file__).with_name("app.py")


def dashboard_command(root: Path, host: str, port: int, reload_seconds: float) -> list[str]:
    """The ``streamlit run`` command line of the dashboard (headless, no usage statistics, no file watcher)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "viewer",
            "--", "--warehouse", str(root), "--reload-seconds", str(reload_seconds)]


def run(cfg: Config, command: str, host: str | None, port: int | None) -> int:
    """Run ``serve`` until interrupted (returns the exit code), or become the ``dashboard``'s Streamlit server."""
    sv = cfg.serving
    host = host or sv.host
    try:
        root = local_root(cfg.warehouse.root)
    except ValueError as exc:
        print(f"dser-spark {command}: {exc}", file=sys.stderr)
        return 2
    if command == "serve":
        from dser_spark.serving.api import serve

        return serve(root, host, port or sv.api_port, sv.reload_seconds)
    log.info("dashboard on http://%s:%d; warehouse %s", host, port or sv.dashboard_port, root)
    argv = dashboard_command(root, host, port or sv.dashboard_port, sv.reload_seconds)
    os.execv(argv[0], argv)  # streamlit replaces this process: one process, its signals, its exit code
