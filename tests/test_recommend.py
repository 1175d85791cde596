"""Exact top-K: equals brute force, excludes seen items, deterministic ties."""
import numpy as np
import pandas as pd
import pytest
import torch

from dser_spark.config import ModelConfig
from dser_spark.model import DSER, Inputs
from dser_spark.recommend import recommend_all, top_k_block
from dser_spark.train import Trained, model_bytes, save_artifacts


def _trained(n_users=9, n_items=50, seed=0, **model_kw):
    g = torch.Generator().manual_seed(seed)
    inputs = Inputs(torch.randn(n_users, 6, generator=g), torch.randn(n_users, 6, generator=g),
                    torch.randn(n_items, 6, generator=g), torch.randn(n_items, 6, generator=g),
                    torch.randn(n_items, 3, generator=g))
    torch.manual_seed(seed)
    model = DSER(inputs, ModelConfig(gmf_dim=4, mlp_layers=[8, 4], **model_kw)).eval()
    return Trained(model, np.arange(1, n_users + 1) * 10, np.arange(n_items) * 3 + 1)


def _brute_force(trained, user_ids, seen, k):
    rows = []
    with torch.no_grad():
        for uid, s in zip(user_ids, seen):
            u = int(np.searchsorted(trained.user_ids, uid))
            logits = trained.model(torch.full((len(trained.item_ids),), u), torch.arange(len(trained.item_ids)))
            order = sorted((-float(v), int(trained.item_ids[j])) for j, v in enumerate(logits)
                           if trained.item_ids[j] not in set(s))
            for rank, (neg, item) in enumerate(order[:k], start=1):
                rows.append((uid, rank, item))
    return rows


@pytest.mark.parametrize("item_block", [7, 16, 4096])
def test_top_k_equals_brute_force_and_excludes_seen(item_block):
    trained = _trained()
    users = trained.user_ids[[0, 3, 8]]
    seen = [trained.item_ids[:20], np.array([], dtype=np.int64), trained.item_ids[::2]]
    got = top_k_block(trained, users, seen, k=10, item_block=item_block)
    assert list(zip(got.user_id, got["rank"], got.item_id)) == _brute_force(trained, users, seen, 10)
    for uid, s in zip(users, seen):
        mine = got[got.user_id == uid]
        assert not set(mine.item_id) & set(s)
        assert (np.diff(mine.score.to_numpy()) <= 0).all()
        assert mine["rank"].tolist() == list(range(1, 11))


def test_ties_are_broken_by_item_id_and_short_lists_are_allowed():
    trained = _trained(use_gmf=False, use_mlp=False, use_recency=False)  # constant score: all tie
    got = top_k_block(trained, trained.user_ids[:2], [trained.item_ids[:45], np.array([])], k=10, item_block=8)
    first = got[got.user_id == trained.user_ids[0]]
    assert first.item_id.tolist() == trained.item_ids[45:].tolist()  # only 5 candidates left
    second = got[got.user_id == trained.user_ids[1]]
    assert second.item_id.tolist() == trained.item_ids[:10].tolist()


def test_recommend_all_through_spark_matches_the_block_scorer(spark, tmp_path):
    from dser_spark.config import Config
    trained = _trained()
    save_artifacts(trained, Config(), tmp_path / "m")
    rows = [(int(u), int(i)) for u in trained.user_ids for i in trained.item_ids[: int(u) // 10]]
    inter = spark.createDataFrame(rows, "user_id int, item_id int")
    users = spark.createDataFrame([(int(u),) for u in trained.user_ids], "user_id int")
    got = recommend_all(spark, model_bytes(tmp_path / "m"), "r1", users, inter, k=5, user_block=4).toPandas()
    seen = [trained.item_ids[: int(u) // 10] for u in trained.user_ids]
    want = top_k_block(trained, trained.user_ids, seen, 5)
    key = ["user_id", "rank"]
    got, want = got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    assert got[["user_id", "rank", "item_id"]].astype("int64").equals(want[["user_id", "rank", "item_id"]].astype("int64"))
    assert np.allclose(got.score, want.score, atol=1e-6)
