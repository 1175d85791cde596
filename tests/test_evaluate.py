"""NCF-protocol metrics on hand-computed cases."""
import math

import numpy as np
import pandas as pd
import pytest

from dser_spark.evaluate import (hit_ratio, ndcg, popularity_ranker, ranker_scorer, sampled_metrics,
                                 target_ranks)


def popularity_scorer(counts: pd.Series):
    """ItemPop on the sampled protocol over the items 1..9."""
    item_ids = np.arange(1, 10)
    return ranker_scorer(popularity_ranker(counts, item_ids), item_ids)


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


def test_sampled_metrics_with_item_popularity():
    counts = pd.Series({1: 50, 2: 40, 3: 30, 4: 20, 5: 10})
    candidates = pd.DataFrame({"user_id": [1, 2], "item_id": [2, 5], "negatives": [[1, 3, 4], [1, 2, 3]]})
    got = sampled_metrics(popularity_scorer(counts), candidates, [1, 2])
    # user 1: item 2 ranks 1 (only item 1 is more popular); user 2: item 5 ranks 3
    assert got[("HR", 1)] == 0.0
    assert got[("HR", 2)] == 0.5
    assert got[("NDCG", 2)] == pytest.approx(0.5 * math.log(2) / math.log(3))


def test_short_candidate_rows_are_padded_not_credited():
    counts = pd.Series({1: 5, 2: 4, 3: 3})
    candidates = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 1], "negatives": [[1], [2, 3]]})
    got = sampled_metrics(popularity_scorer(counts), candidates, [1])
    assert got[("HR", 1)] == 0.5  # user 1's item 3 loses to item 1; user 2's item 1 wins


def _full_case():
    from dser_spark.evaluate import full_metrics
    item_ids = np.array([10, 20, 30, 40, 50])
    scores = {1: [5.0, 4.0, 3.0, 2.0, 1.0],   # history {10}: target 30 ranks 1 (behind 20)
              2: [1.0, 1.0, 1.0, 1.0, 1.0],   # all tied: the target 50 ranks behind the 3 other unseen items
              3: [0.0, 9.0, 8.0, 7.0, 6.0]}   # history {20, 30}: target 40 ranks 0
    ranker = lambda users: np.array([scores[int(u)] for u in users])
    users, targets = np.array([1, 2, 3]), np.array([30, 50, 40])
    history = [np.array([10]), np.array([20]), np.array([20, 30])]
    return full_metrics(ranker, item_ids, users, targets, history, [1, 2], block=2, coverage_k=2)


def test_full_ranking_metrics_by_hand():
    got = _full_case()
    # ranks: user 1 -> 1, user 2 -> 3 (ties count against), user 3 -> 0
    assert got[("Recall", 1)] == pytest.approx(1 / 3)
    assert got[("Recall", 2)] == pytest.approx(2 / 3)
    assert got[("NDCG", 2)] == pytest.approx((math.log(2) / math.log(3) + 1.0) / 3)
    assert got[("MRR", 0)] == pytest.approx((1 / 2 + 1 / 4 + 1) / 3)
    # top-2 lists (history excluded): user 1 {20, 30}, user 2 {two of 10, 30, 40, 50}, user 3 {40, 50}
    assert got[("Coverage", 2)] >= 3 / 5


def test_ranker_scorer_reads_the_same_scores_as_full_ranking():
    from dser_spark.evaluate import dense_ranker, ranker_scorer
    item_ids = np.array([3, 5, 8])
    ranker = dense_ranker(np.array([1, 2]), np.array([[1.0, 0.0], [0.0, 1.0]]),
                          np.array([[1.0, 2.0], [3.0, 0.5], [0.0, 0.0]]))
    got = ranker_scorer(ranker, item_ids)(np.array([2, 1, 7]), np.array([[5, 3, 99], [8, 5, 3], [3, 5, 8]]))
    assert got[0].tolist() == [0.5, 2.0, -np.inf]      # unknown item 99
    assert got[1].tolist() == [0.0, 3.0, 1.0]
    assert np.isneginf(got[2]).all()                   # unknown user 7


def test_model_ranker_equals_pairwise_forward():
    import torch
    from dser_spark.config import ModelConfig
    from dser_spark.evaluate import model_ranker, model_scorer
    from dser_spark.model import DSER, Inputs
    from dser_spark.artifacts import Trained
    g = torch.Generator().manual_seed(0)
    inputs = Inputs(*(torch.randn(n, 4, generator=g) for n in (5, 5, 7, 7, 7)))
    model = DSER(inputs, ModelConfig(gmf_dim=3, mlp_layers=[4, 2])).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.out.weight)
        torch.nn.init.normal_(model.item_bias)
    trained = Trained(model, np.arange(5) * 2, np.arange(7) + 100)
    full = model_ranker(trained, user_block=2)(np.array([0, 8, 4]))
    cands = np.tile(np.arange(7) + 100, (3, 1))
    pairwise = model_scorer(trained)(np.array([0, 8, 4]), cands)
    assert np.allclose(full, pairwise, atol=1e-5)
