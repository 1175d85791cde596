"""The DSER module, its training loop and its artifacts."""
import numpy as np
import pandas as pd
import pytest
import torch

from dser_spark.config import ModelConfig, TrainConfig
from dser_spark.model import DSER, Inputs, from_state
from dser_spark.train import FitData, epoch_samples, fit, load_artifacts, load_from_bytes, model_bytes, save_artifacts
from dser_spark import sequences


def _inputs(n_users=7, n_items=11, d=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Inputs(torch.randn(n_users, d, generator=g), torch.randn(n_users, d, generator=g),
                  torch.randn(n_items, d, generator=g), torch.randn(n_items, d, generator=g),
                  torch.randn(n_items, c, generator=g))


@pytest.mark.parametrize("gmf, mlp, rec", [(True, True, True), (True, False, False), (False, True, False),
                                           (False, False, True), (True, True, False)])
def test_score_block_equals_pairwise_forward(gmf, mlp, rec):
    torch.manual_seed(0)
    model = DSER(_inputs(), ModelConfig(gmf_dim=5, mlp_layers=[6, 3], use_gmf=gmf, use_mlp=mlp,
                                        use_recency=rec)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.out.weight)
        users, items = torch.arange(7), torch.arange(11)
        block = model.score_block(model.user_part(users), model.item_part(items))
        uu, ii = torch.meshgrid(users, items, indexing="ij")
        pairwise = model(uu.reshape(-1), ii.reshape(-1)).reshape(7, 11)
    assert torch.allclose(block, pairwise, atol=1e-5)


def test_recency_term_is_weight_times_dot_product():
    inputs = _inputs()
    model = DSER(inputs, ModelConfig(use_gmf=False, use_mlp=False, use_recency=True, recency_init=2.0)).eval()
    with torch.no_grad():
        got = model(torch.tensor([3]), torch.tensor([5]))
    expected = model.out.bias + 2.0 * (inputs.recent_vectors[3] @ inputs.item_out_vectors[5])
    assert torch.allclose(got, expected)


def _fit_data():
    rng = np.random.default_rng(0)
    user_ids = np.arange(1, 31)
    item_ids = np.arange(100, 140)
    # two taste groups: users 1..15 like items 100..119, the others 120..139
    pos = [np.sort(rng.choice(np.arange(100, 120) if u <= 15 else np.arange(120, 140), 8, replace=False))
           for u in user_ids]
    return FitData(user_ids, item_ids, pos, _inputs(30, 40))


def test_epoch_samples_match_the_spark_train_samples_table(spark):
    data = _fit_data()
    u, i, y = epoch_samples(data, 4, seed=3, epoch=1)
    rows = [(int(uid), int(it)) for uid, items in zip(data.user_ids, data.user_pos) for it in items]
    fit_pos = spark.createDataFrame(rows, "user_id int, item_id int")
    table = sequences.train_samples(spark, fit_pos, data.item_ids, 4, seed=3, epoch=1).toPandas()
    mine = pd.DataFrame({"user_id": data.user_ids[u], "item_id": data.item_ids[i], "label": y})
    key = ["user_id", "item_id", "label"]
    assert mine.sort_values(key).reset_index(drop=True).equals(
        table[key].astype(mine.dtypes.to_dict()).sort_values(key).reset_index(drop=True))


def test_training_learns_the_taste_groups_and_is_deterministic():
    data = _fit_data()
    cfg = ModelConfig(gmf_dim=8, mlp_layers=[16, 8], use_recency=False)
    tcfg = TrainConfig(epochs=15, batch_size=64, lr=0.01, show_progress=False)
    a = fit(data, cfg, tcfg, seed=1)
    b = fit(data, cfg, tcfg, seed=1)
    assert a.history == b.history
    assert a.history[-1]["loss"] < a.history[0]["loss"]
    with torch.no_grad():
        s = a.model.score_block(a.model.user_part(torch.arange(30)), a.model.item_part(torch.arange(40)))
    in_group = torch.cat([s[:15, :20].reshape(-1), s[15:, 20:].reshape(-1)]).mean()
    out_group = torch.cat([s[:15, 20:].reshape(-1), s[15:, :20].reshape(-1)]).mean()
    assert in_group > out_group + 1.0


def test_artifacts_round_trip_without_pickle(tmp_path):
    from dser_spark.config import Config
    data = _fit_data()
    trained = fit(data, ModelConfig(), TrainConfig(epochs=1, show_progress=False), seed=0)
    save_artifacts(trained, Config(), tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["config.yaml", "history.json", "item_index.parquet", "model.safetensors", "user_index.parquet"]
    for loaded in (load_artifacts(tmp_path / "m"), load_from_bytes(model_bytes(tmp_path / "m"))):
        assert np.array_equal(loaded.user_ids, data.user_ids)
        u, i = torch.tensor([0, 5, 29]), torch.tensor([1, 39, 7])
        with torch.no_grad():
            assert torch.equal(loaded.model(u, i), trained.model(u, i))
