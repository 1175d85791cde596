"""Split, sequences and negative sampling on small data whose answer is known."""
import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from dser_spark import sequences
from dser_spark.negatives import draw_negatives, user_rng

SCHEMA = "user_id int, item_id int, rating float, ts timestamp"


def _ts(day: int) -> dt.datetime:
    return dt.datetime(2020, 1, 1) + dt.timedelta(days=day)


@pytest.fixture
def small(spark):
    rows = [
        (1, 10, 5.0, _ts(3)), (1, 11, 4.0, _ts(1)), (1, 12, 2.0, _ts(2)), (1, 13, 3.0, _ts(5)),
        (2, 10, 1.0, _ts(9)), (2, 14, 5.0, _ts(4)),
        (3, 15, 5.0, _ts(7)),  # one interaction: train only
    ]
    return spark.createDataFrame(rows, SCHEMA)


def _splits(spark, df, **kw):
    out = sequences.split_latest(df, kw.get("validation", True), kw.get("min_interactions", 2)).toPandas()
    return {(r.user_id, r.item_id): r.split for r in out.itertuples()}


def test_split_picks_latest_as_test_and_second_latest_as_validation(spark, small):
    s = _splits(spark, small)
    assert s[(1, 13)] == "test" and s[(1, 10)] == "validation"
    assert s[(1, 11)] == s[(1, 12)] == "train"
    assert s[(2, 10)] == "test" and s[(2, 14)] == "train"  # two items: no validation
    assert s[(3, 15)] == "train"  # below min_interactions: no test row


def test_split_without_validation_and_higher_minimum(spark, small):
    s = _splits(spark, small, validation=False, min_interactions=3)
    assert s[(1, 13)] == "test" and s[(1, 10)] == "train"
    assert s[(2, 10)] == "train"


def test_implicit_threshold_and_time_ordered_sequences(spark, small):
    pos = sequences.positives(small, 3.0)
    seqs = sequences.build_sequences(sequences.split_latest(pos, True, 2)).toPandas()
    by_user = seqs.set_index("user_id")
    assert list(by_user.loc[1, "item_ids"]) == [11, 10, 13]  # rating 2.0 dropped, ordered by ts
    assert (by_user.loc[1, "has_validation"], by_user.loc[1, "has_test"]) == (True, True)
    assert list(by_user.loc[2, "item_ids"]) == [14]
    assert (by_user.loc[2, "has_validation"], by_user.loc[2, "has_test"]) == (False, False)
    assert sequences.positives(small, 0).count() == 7
    # scopes are prefixes: the latest item is the test item, the one before it the validation item
    cut = {scope: {int(u): s.tolist() for u, s in zip(*sequences.scope_sequences(seqs, scope))}
           for scope in (sequences.SELECT, sequences.EVAL, sequences.SERVE)}
    assert cut[sequences.SELECT] == {1: [11], 2: [14], 3: [15]}
    assert cut[sequences.EVAL] == {1: [11, 10], 2: [14], 3: [15]}
    assert cut[sequences.SERVE] == {1: [11, 10, 13], 2: [14], 3: [15]}


def test_draw_negatives_rejects_excluded_and_is_seeded():
    universe = np.arange(100)
    exclude = np.arange(0, 100, 2)
    a = draw_negatives(user_rng(1, 0, 5), universe, exclude, 200)
    b = draw_negatives(user_rng(1, 0, 5), universe, exclude, 200)
    assert len(a) == 200 and np.array_equal(a, b)
    assert not np.isin(a, exclude).any()
    c = draw_negatives(user_rng(1, 1, 5), universe, exclude, 200)
    assert not np.array_equal(a, c)


def test_draw_negatives_distinct_and_exhausted():
    universe = np.arange(10)
    got = draw_negatives(user_rng(0, 0, 1), universe, np.arange(7), 99, distinct=True)
    assert sorted(got) == [7, 8, 9]  # fewer eligible than asked: all of them, no endless loop
    assert len(draw_negatives(user_rng(0, 0, 1), universe, universe, 5)) == 0
    many = draw_negatives(user_rng(0, 0, 2), np.arange(1000), np.arange(10), 99, distinct=True)
    assert len(set(many)) == 99


def _random_interactions(spark, n_users=40, n_items=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(n_items, size=rng.integers(3, 20), replace=False) + 100
        for j, i in enumerate(items):
            rows.append((u, int(i), float(rng.integers(1, 6)), _ts(j)))
    return spark.createDataFrame(rows, SCHEMA), pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts"])


def test_train_samples_never_contain_positives_and_ignore_partitioning(spark):
    df, pdf = _random_interactions(spark)
    universe = np.sort(pdf["item_id"].unique())
    fit = df.select("user_id", "item_id")
    a = sequences.train_samples(spark, fit.repartition(1), universe, 4, seed=7, epochs=[2]).toPandas()
    b = sequences.train_samples(spark, fit.repartition(5), universe, 4, seed=7, epochs=[2]).toPandas()
    key = ["user_id", "item_id", "label"]
    assert a.sort_values(key).reset_index(drop=True).equals(b.sort_values(key).reset_index(drop=True))
    pos = set(zip(pdf.user_id, pdf.item_id))
    negs = a[a.label == 0]
    assert len(negs) == 4 * len(pdf)
    assert not any((u, i) in pos for u, i in zip(negs.user_id, negs.item_id))
    assert (a.epoch == 2).all()
    c = sequences.train_samples(spark, fit, universe, 4, seed=7, epochs=[3]).toPandas()
    assert not c[c.label == 0].sort_values(key)["item_id"].reset_index(drop=True).equals(
        negs.sort_values(key)["item_id"].reset_index(drop=True))
    both = sequences.train_samples(spark, fit, universe, 4, seed=7, epochs=[2, 3]).toPandas()
    key = ["epoch", "user_id", "item_id", "label"]
    assert both.sort_values(key).reset_index(drop=True).equals(
        pd.concat([a, c]).sort_values(key).reset_index(drop=True))


def test_eval_candidates_are_untouched_distinct_items(spark):
    df, pdf = _random_interactions(spark)
    universe = np.sort(pdf["item_id"].unique())
    splits = sequences.split_latest(df, True, 2)
    targets = splits.filter(F.col("split") != "train")
    cands = sequences.eval_candidates(spark, targets, df, universe, 30, seed=1).toPandas()
    touched = pdf.groupby("user_id")["item_id"].apply(set)
    assert len(cands) == 2 * pdf.user_id.nunique()
    for row in cands.itertuples():
        assert len(set(row.negatives)) == len(row.negatives) == 30
        assert not set(row.negatives) & touched[row.user_id]
    again = sequences.eval_candidates(spark, targets.repartition(3), df, universe, 30, seed=1).toPandas()
    merged = cands.merge(again, on=["user_id", "split"])
    assert all(list(x) == list(y) for x, y in zip(merged.negatives_x, merged.negatives_y))
