"""Benchmark: the read-only API and the dashboard over ML-25M-size published tables.

Builds a warehouse in the real layout with the synthetic generator (ratings
from ``dser_spark.synthetic``; items with titles and genres; two published
nights of top-K recommendations behind a ``_published.json`` manifest; a model
manifest), then:

* API: ``dser-spark serve`` in its own process; a bounded loopback load
  generator (asyncio on uvloop, HTTP/1.1 keep-alive, one connection per
  client, each client sending its next request when the last answer is in) asks for random
  users' recommendations at 1, 10 and 100 concurrent clients for ``--seconds``
  each (at most ``--max-requests``): requests/s, p50 and p99 latency;
* dashboard: ``dser-spark dashboard`` in headless Chromium (Debian's
  ``/usr/bin/chromium`` through Playwright): the first load, then for random
  users the time from typing the id and pressing Enter to the page showing
  that user's ratings and recommendations.

    python scripts/bench_serving.py                                  # ML-25M size: 162k users, 25M ratings
    python scripts/bench_serving.py --users 2000 --items 3000 --ratings 300000 --seconds 3   # a quick check

Last line: RESULT api_rps=... api_p99_ms=... dashboard_user_s=... (100 clients; median user switch).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dser_spark.config import Config
from dser_spark.synthetic import build_world, iter_rating_blocks
from dser_spark.synthetic_world import GENRES

NIGHTS = ("2026-11-24", "2026-11-25")
MODEL_ID = "dser-benchserving"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


# ------------------------------------------------------------------ the tables
def build(root: Path, users: int, items: int, ratings: int, k: int, seed: int) -> dict:
    """Write the warehouse; returns what the measurements need (user ids, a sample of expected first rows)."""
    world = build_world(users, items, ratings, seed)
    mids = world.movie_ids.astype(np.int32)
    genres = [[g for b, g in enumerate(GENRES) if m >> b & 1] for m in world.genre_mask.tolist()]
    titles = [f"Generated Title {m} ({y})" for m, y in zip(mids.tolist(), world.years.tolist())]
    (root / "items").mkdir(parents=True)
    pq.write_table(pa.table({"item_id": mids, "title": titles, "year": world.years.astype(np.int32),
                             "genres": genres}), root / "items" / "part-00000.parquet")
    (root / "interactions").mkdir()
    newest: dict[int, int] = {}
    for b, block in enumerate(iter_rating_blocks(users, items, ratings, seed, workers=2)):
        ts = block["timestamp"].to_numpy().astype("datetime64[s]")
        pq.write_table(pa.table({"user_id": block["userId"].to_numpy(np.int32),
                                 "item_id": block["movieId"].to_numpy(np.int32),
                                 "rating": block["rating"].to_numpy(np.float32),
                                 "ts": pa.array(ts, pa.timestamp("us"))}),
                       root / "interactions" / f"part-{b:05d}.parquet")
        last = block.sort_values(["userId", "timestamp", "movieId"]).groupby("userId").tail(1)
        newest.update(zip(last["userId"].tolist(), last["movieId"].tolist()))
    rng = np.random.default_rng(seed)
    user_ids = np.arange(1, users + 1, dtype=np.int32)
    base, step = rng.integers(0, items, users), rng.integers(1, items // k, users)
    table, parts = root / "recommendations", []
    for night, dt_ in enumerate(NIGHTS):
        idx = (base[:, None] + (np.arange(k)[None, :] + night * (np.arange(k) >= k - 3)) * step[:, None]) % items
        source = np.where(rng.random(users) < 0.05, "inferred", "model")
        version = f"dt={dt_}/20261125T020000-{night:08x}"
        (table / version).mkdir(parents=True)
        pq.write_table(pa.table({"user_id": np.repeat(user_ids, k),
                                 "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), users),
                                 "item_id": mids[idx].ravel(),
                                 "score": np.tile(np.linspace(0.9, 0.5, k, dtype=np.float32), users),
                                 "source": np.repeat(source, k), "model_run_id": [MODEL_ID] * (users * k)}),
                       table / version / "part-00000.parquet")
        parts.append({"dt": dt_, "path": version, "location": (table / version).as_uri(), "rows": users * k,
                      "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    (table / "_published.json").write_text(json.dumps({"table": "recommendations", "latest": NIGHTS[-1],
                                                       "partitions": parts}))
    (root / "models" / MODEL_ID).mkdir(parents=True)
    manifest = {"model_id": MODEL_ID, "config": Config().to_dict()}
    (root / "models" / MODEL_ID / "manifest.json").write_text(json.dumps(manifest))
    first = {int(u): titles[int(i)] for u, i in zip(user_ids, idx[:, 0])}
    by_id = dict(zip(mids.tolist(), titles))
    return {"users": user_ids, "first_rec": first, "newest": {u: by_id[i] for u, i in newest.items()}}


# ------------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], url: str, timeout: float = 900.0) -> tuple[subprocess.Popen, float]:
    """``dser-spark ARGS`` until ``url`` answers 200; (process, seconds to get there)."""
    import httpx

    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dser_spark.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while time.perf_counter() - began < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"dser-spark {args[0]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return proc, time.perf_counter() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"{url} not up after {timeout}s")


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


# ------------------------------------------------------------------ the API
async def _client(port: int, users: np.ndarray, deadline: float, budget: list[int], latencies: list[float],
                  errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            request = f"GET /users/{random.choice(users)}/recommendations HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            began = time.perf_counter()
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    finally:
        writer.close()


async def load(port: int, users: np.ndarray, clients: int, seconds: float, max_requests: int) -> dict:
    """``clients`` keep-alive connections asking for random users for ``seconds`` (at most ``max_requests``)."""
    latencies: list[float] = []
    errors: list[int] = []
    began = time.perf_counter()
    await asyncio.gather(*[_client(port, users.tolist(), began + seconds, [max_requests // clients], latencies, errors)
                           for _ in range(clients)])
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(ms), "rps": len(ms) / elapsed, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "errors": len(errors)}


def run_async(coroutine):
    """Run on uvloop when it is there (uvicorn's standard extra brings it): a cheaper load generator."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# ------------------------------------------------------------------ the dashboard
def dashboard_times(url: str, data: dict, n_users: int, seed: int) -> tuple[float, list[float]]:
    """(seconds of the first load, seconds of each user switch) in headless Chromium."""
    from playwright.sync_api import sync_playwright

    rng = random.Random(seed)
    picks = [u for u in rng.sample(data["users"].tolist(), n_users * 2) if u in data["newest"]][:n_users]
    check = """([user, rec, seen]) => {
        const h = document.querySelector('.st-key-history tbody tr');
        const r = document.querySelector('.st-key-recommendations tbody tr');
        const head = [...document.querySelectorAll('h2')].some(e => e.textContent.trim() === 'User ' + user);
        return head && h && r && h.textContent.includes(seen) && r.textContent.includes(rec); }"""
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                       args=FLAGS, viewport={"width": 1280, "height": 1600})
        page = context.new_page()
        began = time.perf_counter()
        page.goto(url)
        box = page.get_by_role("textbox", name="User id")
        box.wait_for(timeout=900_000)
        first = time.perf_counter() - began
        times = []
        for user in picks:
            box.fill(str(user))
            began = time.perf_counter()
            box.press("Enter")
            page.wait_for_function(check, arg=[user, data["first_rec"][user], data["newest"][user]], timeout=60_000,
                                   polling=10)
            times.append(time.perf_counter() - began)
        context.close()
    return first, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=162_000)
    ap.add_argument("--items", type=int, default=62_000)
    ap.add_argument("--ratings", type=int, default=25_000_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--seconds", type=float, default=15.0, help="load per concurrency level")
    ap.add_argument("--max-requests", type=int, default=300_000, help="cap per concurrency level")
    ap.add_argument("--dashboard-users", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="warehouse directory (default: a temporary one, removed)")
    a = ap.parse_args(argv)
    root = Path(a.out or tempfile.mkdtemp(prefix="bench-serving-")) / "warehouse"
    try:
        began = time.perf_counter()
        data = build(root, a.users, a.items, a.ratings, a.k, a.seed)
        print(f"built {a.users:,} users x {a.k} recommendations x {len(NIGHTS)} nights, {a.ratings:,} ratings "
              f"in {time.perf_counter() - began:.0f}s at {root}", flush=True)
        port = free_port()
        api, api_start = start(["serve", "--set", f"warehouse.root={root}", "--port", str(port)],
                               f"http://127.0.0.1:{port}/health")
        try:
            rss, peak = memory_mib(api.pid)
            runs = [run_async(load(port, data["users"], c, a.seconds, a.max_requests)) for c in a.clients]
        finally:
            stop(api)
        port = free_port()
        dash, dash_start = start(["dashboard", "--set", f"warehouse.root={root}", "--port", str(port)],
                                 f"http://127.0.0.1:{port}/_stcore/health")
        try:
            first, switches = dashboard_times(f"http://127.0.0.1:{port}/", data, a.dashboard_users, a.seed)
            dash_rss, dash_peak = memory_mib(dash.pid)
        finally:
            stop(dash)
    finally:
        if a.out is None:
            shutil.rmtree(root.parent, ignore_errors=True)
    print(f"\nAPI: start + load {api_start:.1f}s, RSS {rss:.0f} MiB (peak {peak:.0f} MiB); "
          f"GET /users/{{id}}/recommendations, random users, {a.seconds:g}s per level")
    print("| clients | requests | requests/s | p50 ms | p99 ms | errors |\n| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(f"| {r['clients']} | {r['requests']:,} | {r['rps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} "
              f"| {r['errors']} |")
    median = statistics.median(switches)
    print(f"\nDashboard: server up {dash_start:.1f}s, first page load (incl. the table load) {first:.1f}s, "
          f"RSS {dash_rss:.0f} MiB (peak {dash_peak:.0f} MiB); user switch (type id + Enter -> ratings and "
          f"recommendations shown) over {len(switches)} users: median {median:.2f}s, max {max(switches):.2f}s")
    top = runs[-1]
    print(f"RESULT api_rps={top['rps']:.0f} api_p99_ms={top['p99']:.1f} dashboard_user_s={median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
