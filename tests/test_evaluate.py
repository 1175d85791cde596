"""NCF-protocol metrics on hand-computed cases."""
import math

import numpy as np
import pandas as pd
import pytest

from dser_spark.evaluate import hit_ratio, ndcg, popularity_scorer, sampled_metrics, target_ranks


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
