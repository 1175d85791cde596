"""Logging set-up shared by the command line and the benchmark scripts."""
from __future__ import annotations

import logging
import sys

NOISY = ("gensim", "pyspark", "py4j", "py4j.clientserver", "py4j.java_gateway", "smart_open")


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped lines on stderr; the chatty libraries only from WARNING up."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    quiet_libraries()


def quiet_libraries() -> None:
    """Raise the chatty libraries' loggers to WARNING (py4j again after a session starts)."""
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
