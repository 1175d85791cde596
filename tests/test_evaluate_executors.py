"""Evaluation on the executors equals the driver-side evaluation it replaced (tests/evaluate_reference.py).

Hit ratios, recalls and coverage are counts divided on the driver: exactly
equal. NDCG and MRR are sums of floats: the reference took numpy's pairwise
mean over all users, the executors sum per block and partition and the driver
adds the partitions' sums (math.fsum), so they agree to rounding, 1e-12.
"""
import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F

import evaluate_reference as ref
from dser_spark import pipeline, selection, tables
from dser_spark.artifacts import Trained
from dser_spark.baselines import Factors
from dser_spark.config import Config, EvaluateConfig, ModelConfig, load_config
from dser_spark.evaluate import (FixedScores, KernelModel, block_scorer, evaluate_models, factor_column,
                                 metric_rows, model_files, sampled_metrics, shipped)
from dser_spark.model import DSER, Inputs, baseline_config
from dser_spark.sequences import EVAL, TEST, VALIDATION

KS = [1, 5, 10, 20]
EXACT = ("HR", "Recall", "Coverage")


def random_dser(user_ids: np.ndarray, item_ids: np.ndarray, variant: str = "DSER", seed: int = 0) -> Trained:
    """A DSER-family model with every weight random (no zero-initialised part), at Doc2Vec-like sizes."""
    g = torch.Generator().manual_seed(seed)
    n_users, n_items = len(user_ids), len(item_ids)
    inputs = Inputs(torch.randn(n_users, 16, generator=g), torch.randn(n_users, 16, generator=g),
                    torch.randn(n_items, 16, generator=g), torch.randn(n_items, 16, generator=g),
                    torch.randn(n_items, 8, generator=g))
    model = DSER(inputs, baseline_config(ModelConfig(gmf_dim=8, mlp_layers=[32, 16, 8]), variant)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return Trained(model, np.sort(user_ids).astype(np.int64), np.sort(item_ids).astype(np.int64))


def compare(got: pd.DataFrame, want: pd.DataFrame) -> pd.DataFrame:
    """Both tables side by side; counts equal exactly, float sums to 1e-12."""
    key = ["model", "protocol", "metric", "k"]
    both = want.merge(got, on=key, how="outer", suffixes=("_want", "_got"), indicator=True)
    assert (both["_merge"] == "both").all(), both[both["_merge"] != "both"]
    exact = both["metric"].isin(EXACT)
    assert (both.loc[exact, "value_want"] == both.loc[exact, "value_got"]).all(), both[exact]
    np.testing.assert_allclose(both.loc[~exact, "value_got"], both.loc[~exact, "value_want"], rtol=0, atol=1e-12)
    return both


@pytest.fixture(scope="module")
def small(spark):
    """150 users (three blocks of 64, the last one short) x 60 items with sparse ids, tied popularity counts,
    users the neural models and ALS do not know, users without a fit history."""
    rng = np.random.default_rng(7)
    universe = np.sort(rng.choice(np.arange(10, 1000), size=60, replace=False)).astype(np.int64)
    users = np.sort(rng.choice(np.arange(1, 5000), size=150, replace=False)).astype(np.int64)
    cands, hist = [], []
    for u in users:
        order = rng.permutation(universe)
        n_hist = 0 if u % 11 == 0 else int(rng.integers(1, 30))
        cands.append((int(u), int(order[0]), [int(i) for i in order[1 + n_hist:1 + n_hist + 25]]))
        hist += [(int(u), int(i)) for i in order[1:1 + n_hist]]
    candidates = pd.DataFrame(cands, columns=["user_id", "item_id", "negatives"])
    history = pd.DataFrame(hist, columns=["user_id", "item_id"])
    known = users[users % 7 != 0]
    dser = random_dser(known, universe)
    recency = random_dser(known, universe, "Recency", seed=1)
    counts = pd.Series(rng.integers(0, 6, size=len(universe)), index=universe)  # many ties
    als_users = known[:120]
    user_f = rng.standard_normal((len(als_users), 8)).astype(np.float32)
    item_f = rng.standard_normal((len(universe), 8))
    item_f[::9] = 0.0  # items ALS never saw
    als_df = spark.createDataFrame(pd.DataFrame({"user_id": als_users.astype(np.int32),
                                                 "factors": [r.tolist() for r in user_f]}),
                                   "user_id int, factors array<float>")
    models = {"DSER": KernelModel(model_files(dser, Config())), "ItemPop": FixedScores(counts.to_numpy(np.float64)),
              "Recency": KernelModel(model_files(recency, Config())), "ALS": Factors(als_df, item_f, {})}
    rankers = {"DSER": ref.model_ranker(dser), "ItemPop": ref.popularity_ranker(counts, universe),
               "Recency": ref.model_ranker(recency), "ALS": ref.dense_ranker(als_users, user_f, item_f)}
    by_user = {int(u): g["item_id"].to_numpy(np.int64) for u, g in history.groupby("user_id")}
    want = ref.evaluate_rankers(rankers, candidates, universe, by_user, KS, True, 10)
    return {"universe": universe, "models": models, "want": want, "rankers": rankers, "als_users": als_users,
            "user_f": user_f, "users": users,
            "candidates": spark.createDataFrame(candidates, "user_id int, item_id int, negatives array<int>"),
            "history": spark.createDataFrame(history, "user_id int, item_id int")}


def test_block_scores_are_the_reference_scores_bit_for_bit(small):
    """A block of 64 consecutive users scores exactly as the reference scored them (same kernel calls)."""
    universe, users = small["universe"], small["users"]
    factors = dict(zip(small["als_users"].tolist(), small["user_f"]))
    for name, model in small["models"].items():
        score = block_scorer(name, shipped(model), universe)
        for start in range(0, len(users), 64):
            ids = users[start:start + 64]
            rows = pd.DataFrame({"user_id": ids, factor_column(name): [factors.get(int(u)) for u in ids]})
            assert np.array_equal(score(rows), small["rankers"][name](ids)), (name, start)


@pytest.mark.parametrize("partitions", [1, 3])
def test_executor_metrics_equal_the_driver_reference(small, partitions):
    got = evaluate_models(small["models"], small["candidates"], small["history"], small["universe"], KS,
                          EvaluateConfig(partitions=partitions))
    both = compare(got, small["want"])
    assert list(got["model"].unique()) == ["DSER", "ItemPop", "Recency", "ALS"]  # the order the models came in
    assert len(both) == 4 * (2 * len(KS) + 2 * len(KS) + 2)
    values = both.set_index(["model", "protocol", "metric", "k"])["value_got"]
    assert len({values[(m, "sampled", "HR", 10)] for m in small["models"]}) == 4  # four different models
    assert 0 < values[("DSER", "full", "Coverage", 10)] <= 1


def test_sampled_only_without_history(small):
    got = evaluate_models(small["models"], small["candidates"], None, small["universe"], KS, EvaluateConfig())
    assert set(got["protocol"]) == {"sampled"}
    compare(got, small["want"][small["want"]["protocol"] == "sampled"])


def test_metrics_do_not_depend_on_the_partitioning(small):
    """Blocks are cut in user order, not per partition: the same scores whatever the number of tasks."""
    one, five = (evaluate_models(small["models"], small["candidates"], small["history"], small["universe"], KS,
                                 EvaluateConfig(partitions=p)) for p in (1, 5))
    pd.testing.assert_frame_equal(one[["model", "protocol", "metric", "k"]], five[["model", "protocol", "metric", "k"]])
    np.testing.assert_allclose(one["value"], five["value"], rtol=0, atol=1e-15)


@pytest.mark.slow
def test_ml100k_baselines_equal_the_driver_reference(spark, ml100k_nightlies, tmp_path, caplog):
    """Real ml-100k: ItemPop and ALS (tuned on validation over two ranks) built by ``selection.baseline_model``
    from the warehouse tables, and a random DSER over the real users and items, scored on executors and by the
    reference; the ALS validation scores too."""
    # the tables of the session's real ml-100k nightly (tests/nightlies.py), read only
    cfg = load_config("conf/default.yaml", [f"warehouse.root={tables.root_uri(ml100k_nightlies.local)}",
                                            "evaluate.als_ranks=[8, 16]", "evaluate.als_iter=3"])
    data = pipeline.WarehouseData(spark, cfg)
    universe, k = data.universe, cfg.train.validation_k
    user_ids, user_pos = data.scope_sequences(EVAL)
    itempop, _, _ = selection.baseline_model(cfg, data, "ItemPop", str(tmp_path / "ckpt"))
    with caplog.at_level("INFO", logger="dser_spark"):
        als, _, note = selection.baseline_model(cfg, data, "ALS", str(tmp_path / "ckpt"))
    tried = {int(r.args[0]): r.args[3] for r in caplog.records if r.msg.startswith("ALS rank")}
    assert set(tried) == {8, 16} and als.params["rank"] == max(tried, key=tried.get), (tried, note)
    assert als.params["blocks"] == spark.sparkContext.defaultParallelism  # evaluate.als_blocks: 0, one per core
    dser = random_dser(user_ids, universe)
    models = {"DSER": KernelModel(model_files(dser, cfg)), "ItemPop": itempop, "ALS": als}
    got = evaluate_models(models, data.table("eval_candidates").filter(F.col("split") == TEST),
                          data.positives(EVAL), universe, KS, cfg.evaluate)

    als_users = als.users.toPandas().sort_values("user_id")  # the reference collects the user factors
    als_ranker = ref.dense_ranker(als_users["user_id"].to_numpy(np.int64), np.stack(als_users["factors"].to_numpy()),
                                  als.item_factors)
    rankers = {"DSER": ref.model_ranker(dser),
               "ItemPop": ref.popularity_ranker(pd.Series(np.concatenate(user_pos)).value_counts(), universe),
               "ALS": als_ranker}
    test = data.candidates(TEST)
    assert len(test) == 943
    want = ref.evaluate_rankers(rankers, test, universe, dict(zip(user_ids.tolist(), user_pos)), KS, True, 10)
    both = compare(got, want)
    values = both.set_index(["model", "protocol", "metric", "k"])["value_got"]
    assert values[("ItemPop", "sampled", "HR", 10)] == pytest.approx(0.3181, abs=5e-5)  # README command 1's

    validation = evaluate_models({"ALS": als}, data.table("eval_candidates").filter(F.col("split") == VALIDATION),
                                 None, universe, [k], cfg.evaluate)
    compare(validation, metric_rows("ALS", "sampled", sampled_metrics(ref.ranker_scorer(als_ranker, universe),
                                                                       data.candidates(VALIDATION), [k])))
