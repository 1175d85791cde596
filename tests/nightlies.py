"""One real nightly on ml-100k shared by the cluster and lifecycle tests (run once per test session).

The executors' environment is packed the documented way (scripts/pack_env.sh: a fresh venv with the wheel,
venv-pack) in the background while the nightly runs in the test session (local[2]): the reference. Then the
README's spark-submit command runs the same nightly on local-cluster[2,1,1024] (two executor JVMs with their
own Python workers from the archive), started as a scheduler would (output to files), with one task of the
scoring job failing on purpose (spark.task.maxFailures=2, DSER_INJECT_FAILURE).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dser_spark import pipeline
from dser_spark.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DT = "2026-01-01"
CONFIG = REPO / "conf" / "default.yaml"
SETS = ["evaluate.baselines=[ItemPop]"]  # README command 1's nightly, ItemPop the only baseline
CLUSTER = "local-cluster[2,1,1024]"


@dataclass
class Nightlies:
    local: Config          # the reference, run in the test session
    cluster: Config        # spark-submit on local-cluster with the packed environment
    cluster_sets: list[str]
    returncode: int
    stdout: str            # spark-submit merges the Python driver's stderr (our log lines) into stdout
    stderr: str            # Spark's own log lines (task failures and retries among them)


def run(spark, base: Path) -> Nightlies:
    archive = base / "env.tar.gz"
    pack_log = base / "pack.log"
    with open(pack_log, "w") as out:
        packing = subprocess.Popen(["bash", str(REPO / "scripts" / "pack_env.sh"), str(archive)], cwd=REPO,
                                   env={**os.environ, "PYTHON": sys.executable, "COMPRESS_LEVEL": "1"},
                                   stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            local = load_config(CONFIG, [f"warehouse.root={base / 'local'}", *SETS])
            pipeline.run_nightly(spark, local, DT)
        finally:
            packing.wait(timeout=1500)
    if packing.returncode != 0:
        raise RuntimeError(f"scripts/pack_env.sh failed:\n{pack_log.read_text()[-3000:]}")
    sets = [f"warehouse.root={base / 'cluster'}", *SETS]
    command = [str(VENV_BIN / "spark-submit"), "--master", CLUSTER,
               "--archives", f"{archive}#environment",
               "--conf", "spark.pyspark.python=./environment/bin/python",
               "--conf", f"spark.pyspark.driver.python={sys.executable}",
               "--conf", "spark.task.maxFailures=2",
               "--conf", "spark.executorEnv.DSER_INJECT_FAILURE=recommend",
               "jobs/nightly.py", "--config", str(CONFIG), "--dt", DT, *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_WORKER_DIR": str(base / "work")}  # the executors' unpacked archives stay under base
    for key in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):  # as on a cluster: nothing but the submit line
        env.pop(key, None)
    with open(base / "stdout.log", "w") as out, open(base / "stderr.log", "w") as err:
        try:  # ~4 min on a quiet machine
            done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=err, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise RuntimeError("spark-submit on local-cluster did not end in 900 s; the ends of its logs:\n"
                               f"{(base / 'stdout.log').read_text()[-3000:]}\n"
                               f"{(base / 'stderr.log').read_text()[-3000:]}") from None
    return Nightlies(local, load_config(CONFIG, sets), sets, done.returncode,
                     (base / "stdout.log").read_text(), (base / "stderr.log").read_text())
