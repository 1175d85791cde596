"""The DSER module, its training loop and its artifacts."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from dser_spark.config import ModelConfig, TrainConfig
from dser_spark.model import DSER, Inputs, baseline_config, newest_first, window_means
from dser_spark.artifacts import load_artifacts, load_from_bytes, model_bytes, save_artifacts
from dser_spark.negatives import negative_weights
from dser_spark.scoring import Kernel
from dser_spark.train import FitData, Optimizer, epoch_groups, fit, group_loss, pretrained_state
from dser_spark import model as model_module, sequences


def all_logits(model, n_users, n_items):
    """(n_users, n_items) logits of every pair through the scoring kernel."""
    kernel = Kernel(model, torch.arange(n_items), pairs=7)
    return kernel.logits(kernel.users(model.user_part(torch.arange(n_users))), 0, n_items).clone()


def _inputs(n_users=7, n_items=11, d=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Inputs(torch.randn(n_users, d, generator=g), torch.randn(n_users, d, generator=g),
                  torch.randn(n_items, d, generator=g), torch.randn(n_items, d, generator=g),
                  torch.randn(n_items, c, generator=g))


@pytest.mark.parametrize("gmf, mlp, rec", [(True, True, True), (True, False, False), (False, True, False),
                                           (False, False, True), (True, True, False)])
def test_kernel_logits_equal_pairwise_forward(gmf, mlp, rec):
    torch.manual_seed(0)
    model = DSER(_inputs(), ModelConfig(gmf_dim=5, mlp_layers=[6, 3], use_gmf=gmf, use_mlp=mlp,
                                        use_recency=rec)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.out.weight)
        users, items = torch.arange(7), torch.arange(11)
        block = all_logits(model, 7, 11)
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


def _samples(data: FitData, negatives: int, seed: int, epoch: int, weights=None) -> pd.DataFrame:
    """One epoch's ``epoch_groups`` as (user_id, item_id, label) rows: the layout of ``train_samples``."""
    users, items = epoch_groups(data, negatives, seed, epoch, weights)
    neg = items[:, 1:].reshape(-1)
    kept = neg >= 0
    u = torch.cat([users, users.repeat_interleave(negatives)[kept]]).numpy()
    i = torch.cat([items[:, 0], neg[kept]]).numpy()
    y = np.concatenate([np.ones(len(users), np.float32), np.zeros(int(kept.sum()), np.float32)])
    return pd.DataFrame({"user_id": data.user_ids[u], "item_id": data.item_ids[i], "label": y})


def _same_rows(mine: pd.DataFrame, table: pd.DataFrame) -> bool:
    key = ["user_id", "item_id", "label"]
    return mine.sort_values(key).reset_index(drop=True).equals(
        table[key].astype(mine.dtypes.to_dict()).sort_values(key).reset_index(drop=True))


def _positives_frame(spark, data: FitData):
    rows = [(int(uid), int(it)) for uid, items in zip(data.user_ids, data.user_pos) for it in items]
    return spark.createDataFrame(rows, "user_id int, item_id int")


def test_epoch_groups_draw_the_spark_train_samples_table(spark):
    data = _fit_data()
    table = sequences.train_samples(spark, _positives_frame(spark, data), data.item_ids, 4, seed=3,
                                    epochs=[1]).toPandas()
    assert len(table) == 5 * len(data.flat_items)
    assert _same_rows(_samples(data, 4, seed=3, epoch=1), table)


def test_popularity_negatives_follow_item_counts_and_match_the_spark_table(spark):
    data = _fit_data()
    cfg = TrainConfig(negative_sampling="popularity", popularity_power=1.0)
    counts = np.bincount(data.flat_items.numpy(), minlength=len(data.item_ids))
    weights = negative_weights(cfg, lambda: counts)
    assert np.allclose(weights, (counts + 1) / (counts + 1).sum())
    assert negative_weights(TrainConfig(), lambda: 1 / 0) is None  # uniform: no counts needed
    fit_pos = _positives_frame(spark, data)
    assert np.array_equal(sequences.item_counts(fit_pos, data.item_ids), counts)  # the Spark side's counts
    table = sequences.train_samples(spark, fit_pos, data.item_ids, 4, seed=3, epochs=[1], weights=weights).toPandas()
    assert _same_rows(_samples(data, 4, seed=3, epoch=1, weights=weights), table)
    # skewed: with one item 50x as likely as the rest, it dominates the negatives of users who never saw it
    skew = np.ones(len(data.item_ids))
    skew[0] = 50.0
    skew /= skew.sum()
    pop, uniform = _samples(data, 4, seed=3, epoch=1, weights=skew), _samples(data, 4, seed=3, epoch=1)
    first = data.item_ids[0]
    assert np.mean(pop.loc[pop["label"] == 0, "item_id"] == first) > \
        5 * np.mean(uniform.loc[uniform["label"] == 0, "item_id"] == first)
    for user, item in pop.loc[pop["label"] == 0, ["user_id", "item_id"]].itertuples(index=False):
        assert item not in data.user_pos[int(np.searchsorted(data.user_ids, user))]  # never a touched item


def test_epoch_groups_pad_a_user_without_eligible_negatives(spark, caplog):
    """A user who touched every item has nothing to draw: their rows keep the positive and -1 (masked out
    of the loss), with a warning; the other user's rows are whole; the Spark table has the same draws."""
    item_ids = np.arange(100, 105)
    user_pos = [np.array([100, 101, 102, 103, 104]), np.array([103])]
    data = FitData(np.array([1, 2]), item_ids, user_pos, _inputs(2, 5))
    users, items = epoch_groups(data, 4, seed=5, epoch=0)
    assert items.dtype == torch.int32 and users.dtype == torch.int32
    assert users.tolist() == [0, 0, 0, 0, 0, 1]
    assert items[:, 0].tolist() == [0, 1, 2, 3, 4, 3]
    assert (items[:5, 1:] == -1).all()
    assert set(items[5, 1:].tolist()) <= {0, 1, 2, 4}
    assert "user 1: only 0 eligible negatives" in caplog.text
    table = sequences.train_samples(spark, _positives_frame(spark, data), item_ids, 4, seed=5, epochs=[0]).toPandas()
    assert len(table) == 6 + 4
    assert _same_rows(_samples(data, 4, seed=5, epoch=0), table)


def test_training_learns_the_taste_groups_and_is_deterministic():
    data = _fit_data()
    cfg = ModelConfig(gmf_dim=8, mlp_layers=[16, 8], use_recency=False)
    tcfg = TrainConfig(epochs=15, batch_size=64, lr=0.01, show_progress=False)
    a = fit(data, cfg, tcfg, seed=1)
    b = fit(data, cfg, tcfg, seed=1)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.history[-1]["loss"] < a.history[0]["loss"]
    with torch.no_grad():
        s = all_logits(a.model, 30, 40)
    in_group = torch.cat([s[:15, :20].reshape(-1), s[15:, 20:].reshape(-1)]).mean()
    out_group = torch.cat([s[:15, 20:].reshape(-1), s[15:, :20].reshape(-1)]).mean()
    assert in_group > out_group + 1.0


def _step_on_user(model, opt, user):
    """One optimiser step on the GMF score of ``user`` with item 0."""
    opt.zero_grad()
    model(torch.tensor([user]), torch.tensor([0])).sum().backward()
    opt.step()


@pytest.mark.parametrize("sparse_ids", [False, True])
def test_sparse_ids_update_only_the_rows_of_the_batch(sparse_ids):
    torch.manual_seed(0)
    model = DSER(_inputs(), ModelConfig(gmf_dim=4, mlp_layers=[6, 3], use_recency=False))
    torch.nn.init.normal_(model.out.weight)
    for emb in (model.user_emb, model.item_emb):
        emb.sparse = sparse_ids
    opt = Optimizer(model, TrainConfig(lr=0.1))
    _step_on_user(model, opt, 2)
    after_first = model.user_emb.weight.detach().clone()
    _step_on_user(model, opt, 5)  # user 2 is not in this batch
    moved = model.user_emb.weight.detach() != after_first
    assert moved[5].all()
    # dense Adam's momentum keeps moving row 2; lazy Adam leaves rows outside the batch alone
    assert moved[2].any() != sparse_ids
    assert not moved[[0, 1, 3, 4, 6]].any()


def test_sparse_ids_learn_the_taste_groups_deterministically():
    data = _fit_data()
    cfg = ModelConfig(gmf_dim=8, mlp_layers=[16, 8], use_recency=False)
    tcfg = TrainConfig(epochs=15, batch_size=64, lr=0.01, show_progress=False, sparse_ids=True)
    a, b = fit(data, cfg, tcfg, seed=1), fit(data, cfg, tcfg, seed=1)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    with torch.no_grad():
        s = all_logits(a.model, 30, 40)
    in_group = torch.cat([s[:15, :20].reshape(-1), s[15:, 20:].reshape(-1)]).mean()
    out_group = torch.cat([s[:15, 20:].reshape(-1), s[15:, :20].reshape(-1)]).mean()
    assert in_group > out_group + 1.0


def test_pretraining_starts_neumf_from_its_fitted_gmf_and_mlp_halves(tmp_path):
    data = _fit_data()
    cfg = ModelConfig(gmf_dim=8, mlp_layers=[16, 8], use_recency=False, use_long_term=False, item_bias=False)
    tcfg = TrainConfig(epochs=3, batch_size=64, lr=0.01, show_progress=False, pretrain=True, pretrain_alpha=0.3)
    state = pretrained_state(data, cfg, tcfg, seed=1, label="t", validate=None, epochs=None,
                             checkpoint_dir=tmp_path / "ck")
    plain = dataclasses.replace(tcfg, pretrain=False)
    gmf = fit(data, baseline_config(cfg, "GMF"), plain, seed=1).model
    mlp = fit(data, baseline_config(cfg, "MLP"), plain, seed=1).model
    fused = DSER(data.inputs, cfg)
    fused.load_state_dict(state)
    u, i = torch.arange(30).repeat_interleave(40), torch.arange(40).repeat(30)
    with torch.no_grad():
        expected = 0.3 * gmf(u, i) + 0.7 * mlp(u, i)
        assert torch.allclose(fused(u, i), expected, atol=1e-5)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())
    # the whole fit with pretraining: deterministic, and it trains on from the merged start
    a = fit(data, cfg, tcfg, seed=1)
    b = fit(data, cfg, tcfg, seed=1)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert not torch.equal(a.model.out.weight, state["out.weight"])


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


def test_window_means_by_hand():
    vecs = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    context = torch.tensor([[2, 1, 0], [1, -1, -1], [-1, -1, -1]])  # newest first, -1 = no history
    got = window_means(vecs, context, torch.tensor([1, 2, 5]))
    assert torch.allclose(got[0], torch.tensor([[4.0, 4.0], [2.0, 3.0], [5 / 3, 2.0]]))
    assert torch.allclose(got[1], torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]))
    assert torch.equal(got[2], torch.zeros(3, 2))


def test_window_means_of_many_rows_are_made_in_blocks_with_the_same_values(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    vecs = torch.randn(30, 8, generator=gen)
    context = torch.randint(-1, 30, (53, 6), generator=gen)  # some -1: shorter histories
    windows = torch.tensor([3, 1, 6])
    whole = window_means(vecs, context, windows)
    monkeypatch.setattr(model_module, "WINDOW_ROWS", 7)  # 53 rows: 7 full blocks and a short one
    blocked = window_means(vecs, context, windows)
    assert torch.allclose(blocked, whole, atol=1e-6, rtol=0)
    for row in (0, 6, 7, 52):
        assert torch.allclose(blocked[row], window_means(vecs, context[row:row + 1], windows)[0], atol=1e-6, rtol=0)


def test_fit_data_contexts_see_only_the_past_of_the_same_user():
    inputs = _inputs(2, 6)
    data = FitData(np.array([1, 2]), np.arange(10, 16), [np.array([10, 11, 12]), np.array([15, 14])], inputs,
                   windows=(1, 2))
    # flat positions: user 1 -> 0, 1, 2 ; user 2 -> 3, 4
    ctx = data.context(torch.arange(5))
    assert ctx.tolist() == [[-1, -1], [0, -1], [1, 0], [-1, -1], [5, -1]]
    assert data.last_items().tolist() == [[2, 1], [4, 5]]
    expected = window_means(inputs.item_vectors, data.last_items(), torch.tensor([1, 2]))
    assert torch.allclose(data.inputs.recent_vectors, expected)


def test_untrained_dser_is_exactly_the_recency_score():
    data = _fit_data_windows()
    model = DSER(data.inputs, ModelConfig(gmf_dim=4, mlp_layers=[8, 4])).eval()
    recency = DSER(data.inputs, baseline_config(ModelConfig(gmf_dim=4, mlp_layers=[8, 4]), "Recency")).eval()
    u, i = torch.arange(30).repeat_interleave(40), torch.arange(40).repeat(30)
    with torch.no_grad():
        expected = (data.inputs.recent_vectors[u, 0] * data.inputs.item_out_vectors[i]).sum(-1)
        assert torch.allclose(model(u, i), expected, atol=1e-6)
        assert torch.allclose(recency(u, i), expected, atol=1e-6)


def test_baselines_are_the_module_with_parts_switched_off():
    data = _fit_data_windows()
    base = ModelConfig(gmf_dim=4, mlp_layers=[8, 4])
    u, i = torch.arange(30).repeat_interleave(40), torch.arange(40).repeat(30)
    for name, (gmf, mlp, rec) in {"GMF": (1, 0, 0), "MLP": (0, 1, 0), "NeuMF": (1, 1, 0)}.items():
        cfg = baseline_config(base, name)
        assert (cfg.use_gmf, cfg.use_mlp, cfg.use_recency) == (bool(gmf), bool(mlp), bool(rec))
        torch.manual_seed(0)
        model = DSER(data.inputs, cfg).eval()
        with torch.no_grad():
            torch.nn.init.normal_(model.recency_weights)  # switched off: no effect whatever its value
            torch.nn.init.normal_(model.item_bias)
            w_gmf, w_mlp = model._fusion_weights()
            expected = model.out.bias.expand(len(u)).clone()
            if gmf:
                expected += (model.user_emb(u) * model.item_emb(i)) @ w_gmf
            if mlp:
                feats = torch.cat([model.item_vectors[i], model.content_vectors[i]], -1)
                expected += model.tower(torch.relu(model.mlp_user(model.user_vectors[u]) + model.mlp_item(feats))) @ w_mlp
            assert torch.allclose(model(u, i), expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown"):
        baseline_config(base, "SASRec")


def _fit_data_windows():
    d = _fit_data()
    return FitData(d.user_ids, d.item_ids, d.user_pos, d.inputs, windows=(3, 1, 5))


def test_epoch_groups_pair_each_positive_with_its_own_fresh_negatives():
    data = _fit_data_windows()
    users, items = epoch_groups(data, 4, seed=2, epoch=3)
    assert items.shape == (len(data.flat_items), 5)
    assert torch.equal(items[:, 0], data.flat_items)  # row n is flat position n
    assert torch.equal(users, data.flat_user)
    assert (items[:, 1:] >= 0).all()
    pos_sets = [set(np.searchsorted(data.item_ids, p)) for p in data.user_pos]
    for row in range(len(items)):
        assert not (set(items[row, 1:].tolist()) & pos_sets[int(users[row])])
    _, other = epoch_groups(data, 4, seed=2, epoch=4)
    assert not torch.equal(other[:, 1:], items[:, 1:])  # fresh negatives every epoch
    _, again = epoch_groups(data, 4, seed=2, epoch=3)
    assert torch.equal(again, items)  # seeded by (seed, epoch)


def test_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.5, -9.0]])
    valid = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    sp = torch.nn.functional.softplus
    bce = (sp(torch.tensor(-2.0)) + sp(torch.tensor(0.0)) + sp(torch.tensor(1.0))
           + sp(torch.tensor(-0.5)) + sp(torch.tensor(0.5))) / 5
    assert torch.isclose(group_loss(logits, valid, "bce"), bce)
    bpr = (sp(torch.tensor(-2.0)) + sp(torch.tensor(-1.0)) + sp(torch.tensor(0.0))) / 3
    assert torch.isclose(group_loss(logits, valid, "bpr"), bpr)
    soft = (-torch.log_softmax(logits[0], 0)[0] - torch.log_softmax(logits[1, :2], 0)[0]) / 2
    assert torch.isclose(group_loss(logits, valid, "softmax"), soft)


class _Script:
    """A validator returning scripted values and recording the weights it saw."""

    def __init__(self, values, fail_at=None):
        self.values, self.calls, self.fail_at, self.seen = list(values), 0, fail_at, []

    def __call__(self, model):
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("killed")
        self.seen.append({k: v.clone() for k, v in model.state_dict().items()})
        self.calls += 1
        return self.values[self.calls - 1]


def test_early_stopping_keeps_the_best_weights():
    data = _fit_data_windows()
    cfg = ModelConfig(gmf_dim=4, mlp_layers=[8, 4])
    tcfg = TrainConfig(epochs=8, patience=2, batch_size=64, lr=0.01, show_progress=False)
    script = _Script([0.5, 0.6, 0.9, 0.7, 0.8, 0.95])  # epoch 0 (untrained) .. 5
    trained = fit(data, cfg, tcfg, seed=0, validate=script)
    assert trained.best_epoch == 2 and script.calls == 5  # stopped after 2 epochs without gain
    assert [h["epoch"] for h in trained.history] == [0, 1, 2, 3, 4]
    assert [h["best"] for h in trained.history] == [False, False, True, False, False]
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, script.seen[2][k]), k
    # the chosen epoch count refits to the same weights (deterministic, seeded negatives)
    refit = fit(data, cfg, tcfg, seed=0, epochs=2)
    for k, v in refit.model.state_dict().items():
        assert torch.equal(v, trained.model.state_dict()[k]), k


def test_untrained_model_is_kept_when_training_never_helps():
    data = _fit_data_windows()
    trained = fit(data, ModelConfig(gmf_dim=4, mlp_layers=[8, 4]),
                  TrainConfig(epochs=5, patience=1, show_progress=False), seed=0, validate=_Script([0.9, 0.1, 0.1]))
    assert trained.best_epoch == 0
    untrained = DSER(data.inputs, ModelConfig(gmf_dim=4, mlp_layers=[8, 4]))
    with torch.no_grad():
        u, i = torch.arange(30), torch.arange(30) % 40
        assert torch.allclose(trained.model(u, i), untrained.eval()(u, i))


@pytest.mark.parametrize("sparse_ids", [False, True])
def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, sparse_ids):
    data = _fit_data_windows()
    cfg = ModelConfig(gmf_dim=4, mlp_layers=[8, 4])
    tcfg = TrainConfig(epochs=4, patience=0, batch_size=64, lr=0.01, show_progress=False, sparse_ids=sparse_ids)
    values = [0.1, 0.2, 0.3, 0.25, 0.4]
    whole = fit(data, cfg, tcfg, seed=0, validate=_Script(values))
    with pytest.raises(KeyboardInterrupt):  # killed while validating epoch 3
        fit(data, cfg, tcfg, seed=0, validate=_Script(values, fail_at=3), checkpoint_dir=tmp_path / "ck")
    assert (tmp_path / "ck" / "progress.json").is_file()
    script = _Script(values[3:])
    resumed = fit(data, cfg, tcfg, seed=0, validate=script, checkpoint_dir=tmp_path / "ck")
    assert script.calls == 2  # only epochs 3 and 4 were run again
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for k, v in resumed.model.state_dict().items():
        assert torch.allclose(v, whole.model.state_dict()[k]), k
    assert not (tmp_path / "ck").exists()  # cleared once finished


def test_next_item_training_beats_the_untrained_score_on_a_sequential_pattern():
    """Users walk a ring of items; the next item follows the last one: recency must survive training."""
    rng = np.random.default_rng(0)
    n_items, d = 30, 8
    item_ids = np.arange(n_items)
    seqs = []
    for u in range(40):
        start = rng.integers(0, n_items)
        seqs.append((start + np.arange(12)) % n_items)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n_items, d, generator=g)
    # output vectors point (noisily) at the item before: the untrained recency score is a weak next-item cue
    inputs = Inputs(torch.randn(40, d, generator=g), torch.zeros(40, d), base,
                    torch.roll(base, 1, 0) + 1.5 * torch.randn(n_items, d, generator=g), torch.zeros(n_items, 2))
    data = FitData(np.arange(40), item_ids, [s[:-1] for s in seqs], inputs, windows=(1, 3))
    targets = torch.tensor([int(s[-1]) for s in seqs])

    def hit_rate(model):
        with torch.no_grad():
            scores = all_logits(model, 40, n_items)
        for r, s in enumerate(data.user_pos):  # exclude history
            scores[r, torch.from_numpy(np.searchsorted(item_ids, s))] = -torch.inf
        return float((scores.argmax(1) == targets).float().mean())

    cfg = ModelConfig(gmf_dim=4, mlp_layers=[8, 4])
    untrained = hit_rate(DSER(data.inputs, cfg).eval())
    trained = fit(data, cfg, TrainConfig(epochs=8, batch_size=64, lr=0.03, show_progress=False), seed=0)
    assert hit_rate(trained.model) > untrained + 0.2


def test_newest_first_takes_the_last_items_of_each_history_newest_first():
    histories = [np.array([4, 5, 6, 7]), np.array([], dtype=np.int64), np.array([9]), np.array([1, 2, 3])]
    assert newest_first(histories, 3).tolist() == [[7, 6, 5], [-1, -1, -1], [9, -1, -1], [3, 2, 1]]
    assert newest_first([], 2).shape == (0, 2)
