"""Fault injection, for tests of task retries on a real cluster.

With ``DSER_INJECT_FAILURE=<point>`` in an executor's environment (e.g.
``--conf spark.executorEnv.DSER_INJECT_FAILURE=recommend``), the first attempt
of partition 0 of the Spark job at that point raises; Spark retries the task
(``spark.task.maxFailures`` >= 2) and the output must not change. Unset, it
does nothing.
"""
from __future__ import annotations

import os

VARIABLE = "DSER_INJECT_FAILURE"


class InjectedFailure(RuntimeError):
    """The failure asked for by ``DSER_INJECT_FAILURE``."""


def maybe_fail(point: str) -> None:
    """Raise on the first attempt of partition 0 when ``point`` is the one asked for."""
    if os.environ.get(VARIABLE) != point:
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
        raise InjectedFailure(f"{VARIABLE}={point}: first attempt of partition 0 fails on purpose")
