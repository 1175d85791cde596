#!/usr/bin/env python3
"""Benchmark: the whole nightly on synthetic MovieLens-shaped data at growing sizes.

For each size, synthetic ml-25m-layout CSVs (``dser_spark.synthetic``, seed 0,
cached under ``--work`` so reruns skip generation; generation is timed but not
part of the nightly's time), then ``jobs/nightly.py`` in its own process on a
fresh warehouse with ``train.epochs=1``, baselines ItemPop and Recency and
``--embed-epochs`` Doc2Vec epochs. While it runs, a thread reads ``/proc``
every 0.5 s for the resident memory (VmRSS) of its process tree:

* driver: the Python process running the nightly;
* JVM: the ``java`` process under it (Spark's driver JVM; in local mode the executors too);
* workers: every other Python process of the tree (pyspark.daemon and its forked
  workers under the JVM; with ``train.distributed`` the torchrun processes),
  as a sum and the largest single one. Forked workers share pages, which the
  sum counts once per process: it is an upper bound.

Afterwards the stages' run records (``<warehouse>/runs/<run_id>/<stage>.json``)
give each stage's [started, ended] (whole seconds, boundaries inclusive), wall
seconds and rows written; the samples in that window give its memory peaks.
``scale`` is (seconds / seconds at the smallest size run) / (work / work at that
size), work being ratings (prepare, sequences, embed, train) or users x items
(evaluate, recommend): about 1 or below means the stage grows no faster than its work.

    python scripts/bench_scale.py                          # 1m, 5m, 25m; the machine quiet
    python scripts/bench_scale.py --sizes 1m,5m --mode scale-out --embed-epochs 5
    python scripts/bench_scale.py --sizes tiny             # smoke test, a minute or two

Last line: RESULT nightly_1m_s=... nightly_5m_s=... nightly_25m_s=... driver_rss_25m_gib=...
jvm_rss_25m_gib=... worker_rss_25m_gib=... mode=... (sizes run only; memory of the largest one;
a failed nightly shows as ``nightly_<size>_s=failed`` and ``failed=<sizes>``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name: (ratings, users, items). "tiny" is the smoke-test size only (seconds of work; no
# measurement); the others are what --sizes runs by default.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (20_000, 300, 500),
    "1m": (1_000_000, 6_040, 3_706),        # ML-1M shape
    "5m": (5_000_000, 32_000, 12_000),
    "25m": (25_000_000, 162_541, 62_423),   # ML-25M shape
}
DEFAULT_SIZES = "1m,5m,25m"
DATA_FORMAT = "ml-latest"  # config name of the ml-25m layout (data.format)
MODE_SETS = {"driver": [], "scale-out": ["train.distributed=true", "embed.on_executor=true"]}
WORK = {"prepare": "ratings", "sequences": "ratings", "embed": "ratings", "train": "ratings",
        "evaluate": "pairs", "recommend": "pairs"}  # the work a stage's time should grow with
GIB = 2 ** 30
CSV_FILES = ("ratings.csv", "movies.csv", "links.csv", "tags.csv")
PROGRESS = re.compile(r"stage \w+: done|finished in")


# ------------------------------------------------------------------ /proc sampling
@dataclass(frozen=True)
class Sample:
    """Resident bytes of the nightly's process tree at time ``t`` (unix seconds)."""

    t: float
    driver: int
    jvm: int
    workers: int      # sum over the Python workers
    worker_max: int   # the largest single one


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def _tree(root: int, children: dict[int, list[int]]) -> list[int]:
    """``root`` and its descendants, breadth first."""
    out, queue = [], deque([root])
    while queue:
        pid = queue.popleft()
        out.append(pid)
        queue.extend(sorted(children.get(pid, [])))
    return out


def _kind(pid: int) -> str:
    """``java``, ``python`` or ``other``, from the program name of the process's command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return "other"
    name = os.path.basename(argv0)
    return "java" if name == "java" else "python" if name.startswith("python") else "other"


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` (VmRSS), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def sample_tree(root: int) -> Sample:
    """One sample: the driver (``root`` or, if a wrapper, its first Python descendant), the JVM, the workers."""
    kinds = {pid: _kind(pid) for pid in _tree(root, _children())}
    pythons = [pid for pid, kind in kinds.items() if kind == "python"]
    driver = pythons[0] if pythons else None
    workers = [_rss(pid) for pid in pythons[1:]]
    return Sample(time.time(), _rss(driver) if driver else 0,
                  sum(_rss(pid) for pid, kind in kinds.items() if kind == "java"),
                  sum(workers), max(workers, default=0))


class TreeSampler(threading.Thread):
    """Samples the process tree under ``root`` every ``interval`` seconds until stopped."""

    def __init__(self, root: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.samples: list[Sample] = []
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            self.samples.append(sample_tree(self.root))
            self._stopped.wait(self.interval)

    def stop(self) -> list[Sample]:
        self._stopped.set()
        self.join()
        return self.samples


@dataclass(frozen=True)
class Peaks:
    """Peak resident bytes over some samples."""

    driver: int = 0
    jvm: int = 0
    workers: int = 0
    worker_max: int = 0

    @classmethod
    def of(cls, samples: list[Sample]) -> Peaks:
        return cls(*(max((getattr(s, k) for s in samples), default=0)
                     for k in ("driver", "jvm", "workers", "worker_max")))


# ------------------------------------------------------------------ data and the nightly
def ensure_data(size: str, work: Path) -> Path:
    """The size's CSVs under ``work``, generated (seed 0) unless all four are there already."""
    ratings, users, items = SIZES[size]
    out = work / f"data-{size}"
    if all((out / name).exists() for name in CSV_FILES):
        print(f"data {size}: cached at {out}", flush=True)
        return out
    from dser_spark.synthetic import generate

    began = time.perf_counter()
    generate(out, users, items, ratings, seed=0, workers=os.cpu_count() or 1, progress=False)
    print(f"data {size}: {ratings:,} ratings, {users:,} users, {items:,} items generated in "
          f"{time.perf_counter() - began:.0f}s at {out} (not counted)", flush=True)
    return out


def nightly_command(args: argparse.Namespace, data: Path, warehouse: Path, checkpoints: Path) -> list[str]:
    """``jobs/nightly.py`` with the bench's config overrides."""
    sets = [f"data.format={DATA_FORMAT}", f"data.path={data}", f"warehouse.root={warehouse}",
            f"train.checkpoint_dir={checkpoints}",  # never resume from an earlier run's checkpoints
            "train.epochs=1", "evaluate.baselines=[ItemPop,Recency]",
            f"embed.epochs={args.embed_epochs}", f"embed.content_epochs={args.embed_epochs}",
            f"spark.conf.spark.driver.memory={args.driver_memory}", *MODE_SETS[args.mode], *args.overrides]
    cmd = [sys.executable, str(REPO / "jobs" / "nightly.py"), "--config", str(REPO / "conf" / "default.yaml"),
           "--dt", _dt.date.today().isoformat()]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def follow(proc: subprocess.Popen, log_path: Path, began: float) -> None:
    """Until ``proc`` exits: echo the log's stage-done lines, and the elapsed time every 60 s without one."""
    buffer, last = "", time.time()
    with open(log_path, errors="replace") as log:
        while True:
            done = proc.poll() is not None
            buffer += log.read()
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if PROGRESS.search(line):
                    print(f"  [{time.time() - began:6.0f}s] {line.strip()}", flush=True)
                    last = time.time()
            if done:
                return
            if time.time() - last >= 60:
                print(f"  [{time.time() - began:6.0f}s] running", flush=True)
                last = time.time()
            time.sleep(0.5)


def run_nightly(cmd: list[str], log_path: Path, cwd: Path) -> tuple[int, float, list[Sample]]:
    """Run the nightly, its output to ``log_path``; (exit code, wall seconds, memory samples)."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        began = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        follow(proc, log_path, began)
    except KeyboardInterrupt:  # Ctrl-C: stop the nightly, still report the stages it finished
        print("interrupted: stopping the nightly", flush=True)
    finally:
        if proc.poll() is None:  # interrupted: do not leave the nightly running
            proc.terminate()
            proc.wait(30)
    wall = time.time() - began
    return proc.returncode, wall, sampler.stop()


def read_records(warehouse: Path) -> list[dict]:
    """The stage run records of the (single) run in ``warehouse``, in the order the stages started."""
    records = [json.loads(path.read_text()) for path in warehouse.glob("runs/*/*.json")]
    return sorted(records, key=lambda r: r["started"])


def _epoch(iso: str) -> int:
    return int(_dt.datetime.fromisoformat(iso).timestamp())


# ------------------------------------------------------------------ results
@dataclass
class StageRow:
    size: str
    stage: str
    status: str
    seconds: float
    peaks: Peaks
    rows: int
    work: int


@dataclass
class SizeResult:
    size: str
    status: str                 # ok / failed
    wall: float                 # the nightly process, JVM start and imports included
    peaks: Peaks
    log: Path
    stages: list[StageRow] = field(default_factory=list)


def stage_rows(size: str, records: list[dict], samples: list[Sample]) -> list[StageRow]:
    """One row per record: its seconds and rows written, the memory peaks of the samples in its window."""
    ratings, users, items = SIZES[size]
    work = {"ratings": ratings, "pairs": users * items}
    rows = []
    for r in records:
        lo, hi = _epoch(r["started"]), _epoch(r["ended"])
        inside = [s for s in samples if lo <= int(s.t) <= hi]
        rows.append(StageRow(size, r["stage"], r["status"], float(r["seconds"]), Peaks.of(inside),
                             sum(r.get("tables_written", {}).values()), work.get(WORK.get(r["stage"], ""), 0)))
    return rows


def bench_size(size: str, args: argparse.Namespace, work: Path) -> SizeResult:
    """Generate (or reuse) the data, run the nightly on a fresh warehouse, read back its records."""
    data = ensure_data(size, work)
    warehouse, checkpoints, log = work / f"wh-{size}", work / f"ckpt-{size}", work / f"nightly-{size}.log"
    for path in (warehouse, checkpoints):
        shutil.rmtree(path, ignore_errors=True)
    print(f"nightly {size}: log {log}", flush=True)
    code, wall, samples = run_nightly(nightly_command(args, data, warehouse, checkpoints), log, work)
    status = "ok" if code == 0 else "failed"
    print(f"nightly {size}: {status} (exit {code}) in {wall:.0f}s, {len(samples)} memory samples", flush=True)
    if code != 0:
        print(f"--- last 40 lines of {log}:", *log.read_text(errors="replace").splitlines()[-40:], "---", sep="\n")
    result = SizeResult(size, status, wall, Peaks.of(samples), log,
                        stage_rows(size, read_records(warehouse), samples))
    if not args.keep:
        shutil.rmtree(warehouse, ignore_errors=True)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return result


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}" if n else "-"


def scale(row: StageRow, base: StageRow | None) -> str:
    """(seconds ratio) / (work ratio) against the same stage at the smallest size."""
    if base is None or not (base.seconds and base.work and row.work):
        return "-"
    return f"{(row.seconds / base.seconds) / (row.work / base.work):.2f}"


def print_table(results: list[SizeResult], args: argparse.Namespace) -> None:
    """The per-stage table and a total line per size."""
    cores = os.cpu_count() or 1
    print(f"\nnightly, mode {args.mode}: train.epochs=1, embed.epochs = embed.content_epochs = {args.embed_epochs}, "
          f"baselines ItemPop + Recency, spark.master local[*] ({cores} cores), driver memory {args.driver_memory}; "
          f"peak VmRSS in GiB, sampled every 0.5 s; scale = seconds ratio / work ratio vs the smallest size")
    print("| size | stage | status | wall s | driver GiB | JVM GiB | workers GiB (sum) | largest worker GiB "
          "| rows written | work | scale |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base: dict[str, StageRow] = {}
    for res in results:
        for row in res.stages:
            if row.status == "ok":
                base.setdefault(row.stage, row)
            p = row.peaks
            print(f"| {row.size} | {row.stage} | {row.status} | {row.seconds:.1f} | {_gib(p.driver)} | {_gib(p.jvm)} "
                  f"| {_gib(p.workers)} | {_gib(p.worker_max)} | {row.rows:,} | {row.work:,} "
                  f"| {scale(row, base.get(row.stage)) if row.status == 'ok' else '-'} |")
        p, in_stages = res.peaks, sum(r.seconds for r in res.stages)
        print(f"| {res.size} | **nightly** | {res.status} | {res.wall:.1f} | {_gib(p.driver)} | {_gib(p.jvm)} "
              f"| {_gib(p.workers)} | {_gib(p.worker_max)} | {sum(r.rows for r in res.stages):,} "
              f"| {SIZES[res.size][0]:,} | outside stages {res.wall - in_stages:.0f}s |")


def result_line(results: list[SizeResult], mode: str) -> str:
    """``RESULT nightly_<size>_s=... driver|jvm|worker_rss_<largest>_gib=... mode=...``."""
    parts = [f"nightly_{r.size}_s={r.wall:.1f}" if r.status == "ok" else f"nightly_{r.size}_s=failed"
             for r in results]
    if results:
        top = max(results, key=lambda r: SIZES[r.size][0])
        parts += [f"driver_rss_{top.size}_gib={top.peaks.driver / GIB:.2f}",
                  f"jvm_rss_{top.size}_gib={top.peaks.jvm / GIB:.2f}",
                  f"worker_rss_{top.size}_gib={top.peaks.workers / GIB:.2f}"]
    failed = [r.size for r in results if r.status != "ok"]
    if failed:
        parts.append(f"failed={','.join(failed)}")
    return "RESULT " + " ".join([*parts, f"mode={mode}"])


def parse_sizes(text: str) -> list[str]:
    """``1m,5m`` -> known size names, smallest first (the first one is the scale reference)."""
    sizes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        raise argparse.ArgumentTypeError(f"unknown size(s) {unknown}; choose from {', '.join(SIZES)}")
    return sorted(dict.fromkeys(sizes), key=lambda s: SIZES[s][0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                   help=f"comma-separated, of {', '.join(SIZES)} (default {DEFAULT_SIZES}; tiny: smoke test)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "dser-bench-scale"),
                   help="scratch directory: cached data per size, warehouses, logs")
    p.add_argument("--mode", choices=list(MODE_SETS), default="driver",
                   help="scale-out: train.distributed=true embed.on_executor=true")
    p.add_argument("--embed-epochs", type=int, default=5, help="embed.epochs and embed.content_epochs")
    p.add_argument("--driver-memory", default="6g", help="spark.driver.memory (local mode: all of Spark's heap)")
    p.add_argument("--keep", action="store_true", help="keep each size's warehouse under --work")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config overrides, passed to the nightly")
    args = p.parse_args(argv)
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"bench_scale: sizes {','.join(args.sizes)}, mode {args.mode}, work {work}, "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}", flush=True)
    results = [bench_size(size, args, work) for size in args.sizes]
    print_table(results, args)
    print(f"load average at end {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(result_line(results, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
