"""NCF-protocol metrics on hand-computed cases: ranks of one user block, the sums, the driver's division."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from dser_spark.artifacts import Trained
from dser_spark.config import Config, ModelConfig
from dser_spark.evaluate import (MISS, KernelModel, block_scorer, blocks, full_ranks, hit_ratio, metric_values,
                                 model_files, model_scorer, ndcg, rank_sums, sampled_metrics, sampled_ranks, shipped,
                                 target_ranks)
from dser_spark.model import DSER, Inputs

ITEMS = np.arange(1, 10)


def popularity(counts: dict[int, float]) -> np.ndarray:
    """ItemPop scores over the items 1..9 (0 for items without a count)."""
    return np.array([float(counts.get(i, 0)) for i in ITEMS])


def block(users, targets, negatives=None, history=None) -> pd.DataFrame:
    return pd.DataFrame({"user_id": users, "item_id": targets,
                         "negatives": [np.array(n) for n in negatives or [[]] * len(users)],
                         "history": [None if h is None else np.array(h) for h in history or [None] * len(users)]})


def values(ranks: np.ndarray, protocol: str, ks: list[int], n_items: int = 0, top=None, coverage_k: int = 2):
    """The driver's metrics from one block's sums (as if it were the only partition)."""
    sums = rank_sums(ranks, ks, n_items if protocol == "full" else None)
    rows = pd.DataFrame([{"metric": m, "k": k, "value": float(v), "items": None} for (m, k), v in sums.items()])
    if top is not None:
        rows = pd.concat([rows, pd.DataFrame([{"metric": "covered", "k": coverage_k, "value": 0.0,
                                               "items": np.unique(top)}])], ignore_index=True)
    return metric_values(rows, protocol, ks, n_items, coverage_k)


def test_target_ranks_count_ties_against_the_target():
    scores = np.array([[0.9, 0.1, 0.2, 0.3],    # best: rank 0
                       [0.5, 0.6, 0.1, 0.7],    # two above: rank 2
                       [0.4, 0.4, 0.4, 0.1]])   # two ties: rank 2
    assert target_ranks(scores).tolist() == [0, 2, 2]


def test_hit_ratio_and_ndcg_by_hand():
    ranks = np.array([0, 2, 9, 10])
    assert hit_ratio(ranks, 10) == 0.75
    assert hit_ratio(ranks, 1) == 0.25
    expected = (1.0 + math.log(2) / math.log(4) + math.log(2) / math.log(11) + 0.0) / 4
    assert ndcg(ranks, 10) == pytest.approx(expected)
    assert ndcg(np.array([], dtype=int), 10) == 0.0
    got = values(ranks, "sampled", [1, 10])
    assert got[("HR", 10)] == 0.75 and got[("HR", 1)] == 0.25
    assert got[("NDCG", 10)] == pytest.approx(expected, abs=1e-15)


def test_sampled_ranks_with_item_popularity():
    scores = np.tile(popularity({1: 50, 2: 40, 3: 30, 4: 20, 5: 10}), (2, 1))
    ranks = sampled_ranks(scores, ITEMS, block([1, 2], [2, 5], [[1, 3, 4], [1, 2, 3]]))
    assert ranks.tolist() == [1, 3]  # user 1: only item 1 is more popular; user 2: item 5 is last
    got = values(ranks, "sampled", [1, 2])
    assert got[("HR", 1)] == 0.0
    assert got[("HR", 2)] == 0.5
    assert got[("NDCG", 2)] == pytest.approx(0.5 * math.log(2) / math.log(3))


def test_short_candidate_rows_are_padded_and_unscorable_targets_miss():
    scores = np.tile(popularity({1: 5, 2: 4, 3: 3}), (3, 1))
    scores[2] = -np.inf  # a user the model does not know
    ranks = sampled_ranks(scores, ITEMS, block([1, 2, 3], [3, 1, 2], [[1], [2, 3], [5]]))
    assert ranks.tolist() == [1, 0, MISS]  # user 1's item 3 loses to item 1; user 2's item 1 wins
    assert values(ranks, "sampled", [5])[("HR", 5)] == pytest.approx(2 / 3)


def test_sampled_metrics_on_the_driver_for_early_stopping():
    candidates = pd.DataFrame({"user_id": [1, 2], "item_id": [2, 5], "negatives": [[1, 3, 4], [1, 2, 3]]})
    row = popularity({1: 50, 2: 40, 3: 30, 4: 20, 5: 10})
    got = sampled_metrics(lambda users, items: row[items - 1], candidates, [2])
    assert got[("HR", 2)] == 0.5


def test_full_ranking_metrics_by_hand():
    items = np.array([10, 20, 30, 40, 50])
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0],   # history {10}: target 30 ranks 1 (behind 20)
                       [1.0, 1.0, 1.0, 1.0, 1.0],   # all tied: the target 50 ranks behind the 3 other unseen items
                       [0.0, 9.0, 8.0, 7.0, 6.0]])  # history {20, 30}: target 40 ranks 0
    ranks, top = full_ranks(scores, items, block([1, 2, 3], [30, 50, 40], history=[[10], [20], [20, 30]]), 2)
    assert ranks.tolist() == [1, 3, 0]
    assert {1, 2, 3, 4} <= set(top.tolist())  # universe positions of 20, 30 (user 1) and 40, 50 (user 3)
    got = values(ranks, "full", [1, 2], n_items=5, top=top)
    assert got[("Recall", 1)] == pytest.approx(1 / 3)
    assert got[("Recall", 2)] == pytest.approx(2 / 3)
    assert got[("NDCG", 2)] == pytest.approx((math.log(2) / math.log(3) + 1.0) / 3)
    assert got[("MRR", 0)] == pytest.approx((1 / 2 + 1 / 4 + 1) / 3)
    # top-2 lists (history excluded): user 1 {20, 30}, user 2 {two of 10, 30, 40, 50}, user 3 {40, 50}
    assert got[("Coverage", 2)] in (4 / 5, 1.0)


def test_users_without_history_and_unknown_targets():
    items = np.array([10, 20, 30])
    scores = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    ranks, _ = full_ranks(scores, items, block([1, 2], [20, 99], history=[None, [10]]), 1)
    assert ranks.tolist() == [1, 3]  # user 1 has no history: only item 30 is above; item 99 is unknown: a miss


def test_factor_scores_read_each_users_row_and_unknown_users_score_minus_inf():
    item_ids = np.array([3, 5, 8])
    score = block_scorer("ALS", {"item_factors": np.array([[1.0, 2.0], [3.0, 0.5], [0.0, 0.0]])}, item_ids)
    rows = pd.DataFrame({"user_id": [2, 1, 7], "factors_ALS": [np.array([0.0, 1.0], np.float32),
                                                                np.array([1.0, 0.0], np.float32), None]})
    got = score(rows)
    assert got[0].tolist() == [2.0, 0.5, 0.0]
    assert got[1].tolist() == [1.0, 3.0, 0.0]
    assert np.isneginf(got[2]).all()
    picked = sampled_ranks(got, item_ids, block([2, 1, 7], [5, 8, 3], [[3, 99], [5, 3], [5, 8]]))
    assert picked.tolist() == [1, 2, MISS]  # item 99 is unknown: -inf, below the target


def test_kernel_scores_equal_pairwise_forward():
    g = torch.Generator().manual_seed(0)
    inputs = Inputs(*(torch.randn(n, 4, generator=g) for n in (5, 5, 7, 7, 7)))
    model = DSER(inputs, ModelConfig(gmf_dim=3, mlp_layers=[4, 2])).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.out.weight)
        torch.nn.init.normal_(model.item_bias)
    trained = Trained(model, np.arange(5) * 2, np.arange(7) + 100)
    universe = np.arange(8) + 100  # item 107 is not the model's: -inf
    score = block_scorer("DSER", shipped(KernelModel(model_files(trained, Config()))), universe)
    full = score(pd.DataFrame({"user_id": [0, 8, 4, 3]}))
    pairwise = model_scorer(trained)(np.array([0, 8, 4, 3]), np.tile(universe, (4, 1)))
    assert np.isneginf(full[3]).all() and np.isneginf(full[:, 7]).all()
    assert np.allclose(full[:3, :7], pairwise[:3, :7], atol=1e-5)


def test_blocks_regroup_sorted_batches():
    batches = [pd.DataFrame({"block": [0, 0, 1]}), pd.DataFrame({"block": [1, 1]}), pd.DataFrame({"block": []}),
               pd.DataFrame({"block": [2, 3, 3]})]
    assert [b["block"].tolist() for b in blocks(iter(batches))] == [[0, 0], [1, 1, 1], [2], [3, 3]]
    assert list(blocks(iter([]))) == []
