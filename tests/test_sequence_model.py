"""The attention model behind DSER's scoring interface: kernel top-K, stored artifacts and new users agree with
the encoder itself (no Spark)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import walks
from dser_spark import attention, evaluate, sequence_model
from dser_spark.artifacts import Trained, load_artifacts, save_artifacts
from dser_spark.coldstart import inferred_user_parts
from dser_spark.config import load_config
from dser_spark.model import newest_first
from dser_spark.scoring import Kernel, top_k
from dser_spark.train import FitData

USERS, ITEMS = 30, 25


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fit_data(seed: int = 0) -> FitData:
    return walks.fit_data(seed, USERS, ITEMS)


def config(*sets: str):
    return load_config(None, ["model.encoder=attention", "model.attention.dim=16", "model.attention.max_len=8",
                              "train.loss=full_softmax", "train.batch_size=8", "train.epochs=3", "train.lr=0.01",
                              "model.attention.long_term=true", *sets])


def trained(cfg) -> Trained:
    t = sequence_model.fit(fit_data(), cfg.model, cfg.train, cfg.seed)
    t.model.requires_grad_(False)  # scored as serving scores it
    return t


def test_kernel_top_k_equals_the_encoders_own_scores():
    cfg = config()
    t = trained(cfg)
    model = t.model
    u = torch.arange(USERS)
    direct = model(u.repeat_interleave(ITEMS), torch.arange(ITEMS).repeat(USERS)).view(USERS, ITEMS)
    kernel = Kernel(model, torch.arange(ITEMS))
    logits = kernel.logits(kernel.users(model.user_part(u)), 0, ITEMS)
    assert torch.allclose(logits, direct, atol=1e-5)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    scores, cols = top_k(kernel, kernel.users(model.user_part(u)), empty, 5, 10)
    assert torch.equal(cols, direct.topk(5, dim=1).indices)
    # the state of a stored user is the encoder's state after their fit-scope history
    seqs = [np.searchsorted(t.item_ids, p) + 1 for p in fit_data().user_pos]
    states = attention.final_states(model.encoder, seqs, np.arange(USERS))
    assert torch.allclose(model.user_part(u)[2][:, :-1], states, atol=1e-5)


def test_stored_and_reloaded_model_scores_the_same(tmp_path):
    cfg = config("model.attention.ffn_dim=24")
    t = trained(cfg)
    t.config = cfg
    save_artifacts(t, cfg, tmp_path)
    back = load_artifacts(tmp_path)
    assert isinstance(back.model, sequence_model.SequenceDSER)
    assert [b.ffn[0].out_features for b in back.model.encoder.blocks] == [24, 24]  # model.attention.ffn_dim
    u, i = torch.arange(USERS).repeat(3), torch.arange(3).repeat_interleave(USERS)
    assert torch.equal(back.model(u, i), t.model(u, i))


def test_a_new_user_with_a_known_users_history_gets_that_users_state():
    cfg = config("model.attention.long_term=false")
    t = trained(cfg)
    data = fit_data()
    history = [np.searchsorted(t.item_ids, data.user_pos[4])]
    parts = inferred_user_parts(t.model, history, np.ones(ITEMS), cfg.embed, cfg.seed, np.array([999]))
    known = t.model.user_part(torch.tensor([4]))
    assert torch.allclose(parts[2], known[2], atol=1e-5)


def test_fits_are_deterministic_and_sasrec_has_no_doc2vec_input():
    cfg = config()
    a, b = trained(cfg), trained(cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    sas = sequence_model.SequenceDSER(fit_data().inputs, sequence_model.baseline(cfg.model),
                                      sequence_model.params(sequence_model.baseline(cfg.model), cfg.train, 0),
                                      torch.full((USERS, 8), -1))
    enc = sas.encoder
    assert enc.feature_proj is None and enc.content_proj is None and enc.user_proj is None
    assert a.model.encoder.user_proj is not None and a.model.encoder.content_proj is not None


def test_mask_seen_reaches_the_fit_and_sasrec_is_trained_the_same_way():
    cfg = config("model.attention.mask_seen=true")
    assert sequence_model.params(cfg.model, cfg.train, 0).mask_seen
    assert sequence_model.params(sequence_model.baseline(cfg.model), cfg.train, 0).mask_seen
    masked, plain = trained(cfg).model.state_dict(), trained(config()).model.state_dict()
    assert not torch.equal(masked["encoder.item_emb.weight"], plain["encoder.item_emb.weight"])


def test_tonights_history_and_a_new_users_vectors_give_the_stored_users_parts():
    t = trained(config())  # long_term on: the paragraph vector is part of the state
    model, u = t.model, torch.arange(USERS)
    dense = [np.searchsorted(t.item_ids, p) for p in fit_data().user_pos]
    context = newest_first(dense, model.context_length)
    stored = model.user_part(u)[2]
    assert torch.allclose(model.user_part(u, model.recent(context))[2], stored, atol=1e-5)
    assert torch.allclose(model.new_user_parts(context, model.user_vectors)[2], stored, atol=1e-5)
    assert not torch.allclose(model.new_user_parts(context, None)[2], stored, atol=1e-3)


def test_cached_states_serve_unchanged_histories_and_only_changed_ones_are_encoded(tmp_path):
    cfg = config()
    t = trained(cfg)
    model, u = t.model, torch.arange(USERS)
    dense = [np.searchsorted(t.item_ids, p) for p in fit_data().user_pos]
    context = newest_first(dense, model.context_length)
    assert model.states.shape == (USERS, 16)
    assert torch.allclose(model.recent(context), model.states, atol=1e-5)  # the cache is the encoder's states
    model.states += 100.0  # mark the cache: a row taken from it shows
    dense[3] = np.r_[dense[3], 0]  # user 3 rated one more item tonight
    tonight = model.recent(newest_first(dense, model.context_length), u)
    unchanged = torch.arange(USERS) != 3
    assert torch.equal(tonight[unchanged], model.states[unchanged])
    assert tonight[3].abs().max() < 50  # encoded, not the marked cache
    assert torch.allclose(tonight[3], model.recent(newest_first(dense[3:4], model.context_length))[0], atol=1e-5)
    model.states -= 100.0
    # a model stored before states were cached computes them when loaded
    t.config = cfg
    save_artifacts(t, cfg, tmp_path)
    state = dict(load_artifacts(tmp_path).model.state_dict())
    old = sequence_model.from_state({k: v for k, v in state.items() if k != "states"}, cfg.model)
    assert torch.allclose(old.states, model.states, atol=1e-5)


def test_full_validation_hit_ratio_ranks_every_item_outside_the_fit_history():
    """``train.validation_metric: full``: the held-out item against every item the user has not had."""
    t = trained(config())
    data, k = fit_data(), 5
    held = t.item_ids[np.random.default_rng(5).integers(ITEMS, size=USERS)]
    cands = pd.DataFrame({"user_id": np.r_[data.user_ids, 999], "item_id": np.r_[held, held[0]]})  # 999: unknown
    u = torch.arange(USERS)
    scores = t.model(u.repeat_interleave(ITEMS), torch.arange(ITEMS).repeat(USERS)).view(USERS, ITEMS)
    hits = 0
    for user in range(USERS):
        seen = np.isin(t.item_ids, data.user_pos[user])
        target = int(np.searchsorted(t.item_ids, held[user]))
        others = scores[user][torch.from_numpy(~seen & (np.arange(ITEMS) != target))]
        hits += bool(not seen[target] and (others >= scores[user, target]).sum() < k)
    expected = hits / (USERS + 1)  # the unknown user is a miss
    assert 0 < expected < 1
    assert evaluate.full_hit_ratio(t, cands, data.user_pos, k, block=7) == pytest.approx(expected)
