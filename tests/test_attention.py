"""The attention encoder on small synthetic data (no Spark)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dser_spark import attention as A

N_ITEMS = 20


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(**kw) -> A.AttentionParams:
    base = dict(max_len=10, dim=32, blocks=2, heads=2, dropout=0.1, epochs=1, batch_size=16, lr=5e-3, seed=3)
    base.update(kw)
    return A.AttentionParams(**base)


def successor_sequences(users: int, seed: int = 0) -> list[np.ndarray]:
    """Each user walks the items in order from a random start: item i is followed by i + 1 (wrapping)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        start, length = rng.integers(0, N_ITEMS), rng.integers(4, 14)
        out.append((start + np.arange(length)) % N_ITEMS + 1)
    return out


def vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def test_state_at_t_ignores_later_items():
    model = A.SequenceEncoder(N_ITEMS, small()).eval()
    seq = torch.tensor([[3, 5, 7, 9, 11, 13, 2, 4, 6, 8]])
    later = seq.clone()
    later[0, 6:] = torch.tensor([19, 18, 17, 16])
    a, b = model(seq), model(later)
    assert torch.equal(a[0, :6], b[0, :6])
    assert not torch.allclose(a[0, 6:], b[0, 6:])


def test_padding_does_not_change_states():
    model = A.SequenceEncoder(N_ITEMS, small()).eval()
    short, long = np.array([4, 6, 8]), np.arange(1, 11)
    alone = A.final_states(model, [short])
    batched = A.final_states(model, [long, short])
    assert torch.allclose(alone[0], batched[1], atol=1e-6)
    rows = torch.from_numpy(A.pad_left([short], 10))
    full = model(rows)[0, -3:]
    trimmed = model(rows[:, -3:])[0]  # positions are counted from the right
    with torch.no_grad():
        model.item_emb.weight[A.PAD] = 5.0  # whatever the pad row holds
    assert torch.allclose(full, trimmed, atol=1e-6)
    assert torch.allclose(model(rows)[0, -3:], full, atol=1e-6)


def test_last_states_are_the_last_column_of_the_full_forward():
    """Sorting by length, trimming each batch and querying only the last position change no state."""
    p = small(blocks=2, heads=2)
    model = A.SequenceEncoder(N_ITEMS, p).eval()
    rng = np.random.default_rng(1)
    histories = [rng.integers(1, N_ITEMS + 1, size=rng.integers(1, p.max_len + 4)) for _ in range(40)]
    rows = torch.from_numpy(A.pad_left(histories, p.max_len))
    expected = model(rows)[:, -1]
    for batch in (1, 7, 64):
        assert torch.allclose(A.last_states(model, rows, batch=batch), expected, atol=1e-5)
    assert torch.allclose(A.final_states(model, histories), expected, atol=1e-5)
    model.train()
    assert torch.allclose(A.last_states(model, rows), expected, atol=1e-5)  # dropout off while encoding
    assert model.training  # and the caller's mode is restored


@pytest.mark.parametrize("windows", [1, 2, 5])
def test_training_rows_cover_each_target_once_in_windows_newest_first(windows):
    rng = np.random.default_rng(2)
    seqs = [rng.integers(1, N_ITEMS + 1, size=n) for n in (0, 1, 2, 5, 10, 11, 12, 21, 23, 60)]
    inputs, targets, owners = A.training_rows(seqs, 10, windows)
    for n, s in enumerate(seqs):
        rows = np.flatnonzero(owners == n)
        pairs = [(i, t) for r in rows[::-1] for i, t in zip(inputs[r], targets[r]) if t != A.PAD]
        trained = min(max(len(s) - 1, 0), 10 * windows)  # the newest targets, each once, in order
        assert pairs == list(zip(s[len(s) - 1 - trained:-1], s[len(s) - trained:])) if trained else not pairs
        assert all((inputs[r] != A.PAD).sum() == (targets[r] != A.PAD).sum() > 0 for r in rows[1:])
    newest = np.searchsorted(owners, np.arange(len(seqs)))  # each history's first row
    one_in, one_out, one_owner = A.training_rows(seqs, 10)  # SASRec's rows: the last L targets only
    assert np.array_equal(one_owner, np.arange(len(seqs)))
    assert np.array_equal(inputs[newest], one_in) and np.array_equal(targets[newest], one_out)


def test_older_windows_train_with_their_owners_paragraph_vector():
    seqs = successor_sequences(120)  # 4..13 items: up to 3 windows of 4 targets
    model = A.SequenceEncoder(N_ITEMS, small(max_len=4, windows=3, long_term=True, epochs=8),
                              user_vectors=vectors(120, 8, 0))
    losses = A.fit(model, seqs, users=np.arange(120))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("mask_seen", [False, True])
def test_training_learns_the_successor_pattern_and_lowers_the_loss(mask_seen):
    seqs = successor_sequences(300)
    model = A.SequenceEncoder(N_ITEMS, small(epochs=12, dropout=0.0, mask_seen=mask_seen))
    losses = A.fit(model, seqs)
    assert losses[-1] < 0.5 * losses[0]
    histories = successor_sequences(100, seed=1)
    expected = np.array([h[-1] % N_ITEMS + 1 for h in histories])
    top = A.scores(model, histories).argmax(1).numpy() + 1
    assert (top == expected).mean() >= 0.9


def test_same_seed_same_weights_other_seed_not():
    seqs = successor_sequences(60)

    def weights(seed: int) -> dict[str, torch.Tensor]:
        model = A.SequenceEncoder(N_ITEMS, small(epochs=2, seed=seed))
        A.fit(model, seqs)
        return model.state_dict()

    a, b, c = weights(5), weights(5), weights(6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("loss, sampling", [("full", "uniform"), ("sampled", "uniform"), ("sampled", "popularity")])
def test_both_losses_train(loss, sampling):
    seqs = successor_sequences(200)
    model = A.SequenceEncoder(N_ITEMS, small(epochs=6, loss=loss, negatives=8, sampling=sampling))
    losses = A.fit(model, seqs)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def softmax_inputs(g: torch.Generator, states: int, items: int = 30):
    """(h, v, b, targets): float64 states, item vectors and biases that need gradients."""
    h, v = (torch.randn(n, 8, generator=g, dtype=torch.float64, requires_grad=True) for n in (states, items))
    b = torch.randn(items, generator=g, dtype=torch.float64, requires_grad=True)
    return h, v, b, torch.randint(0, items, (states,), generator=g)


def test_chunked_softmax_equals_autograd_cross_entropy():
    h, v, b, t = softmax_inputs(torch.Generator().manual_seed(0), 700)
    ours = A._ChunkedSoftmaxCE.apply(h, v, b, t, 128, False, None)
    ref = F.cross_entropy(h @ v.T + b, t)
    g1, g2 = torch.autograd.grad(3 * ours, [h, v, b]), torch.autograd.grad(3 * ref, [h, v, b])
    assert torch.allclose(ours, ref)
    assert all(torch.allclose(x, y) for x, y in zip(g1, g2))


def test_seen_pairs_are_each_states_earlier_items_but_its_target():
    inputs, targets, _ = A.training_rows([np.array([4, 9, 4, 2, 7]), np.array([3, 5])], max_len=6)
    seq, tgt = torch.from_numpy(inputs), torch.from_numpy(targets)
    rows, items = A.seen_pairs(seq, tgt)
    assert torch.equal(rows, rows.sort().values)
    states = [(b, t) for b, t in (tgt != A.PAD).nonzero().tolist()]  # the order of h[tgt != PAD]
    for n, (b, t) in enumerate(states):
        seen = {int(i) for i in seq[b, :t + 1] if i != A.PAD} - {int(tgt[b, t])}
        assert set(items[rows == n].tolist()) == seen
    # user 0's targets 9, 4, 2, 7: the target 4 was seen at the first column but stays a competitor
    assert set(items[rows == 1].tolist()) == {9}


def test_masked_chunked_softmax_equals_cross_entropy_without_the_masked_items():
    g = torch.Generator().manual_seed(1)
    h, v, b, t = softmax_inputs(g, 300)
    rows = torch.randint(0, 300, (900,), generator=g).sort().values
    items = torch.randint(0, 30, (900,), generator=g)
    keep = items != t[rows]
    rows, items = rows[keep], items[keep]
    ours = A._ChunkedSoftmaxCE.apply(h, v, b, t, 64, False, (rows, items))
    logits = (h @ v.T + b).index_put((rows, items), torch.tensor(float("-inf"), dtype=torch.float64))
    ref = F.cross_entropy(logits, t)
    g1, g2 = torch.autograd.grad(ours, [h, v, b]), torch.autograd.grad(ref, [h, v, b])
    assert torch.allclose(ours, ref)
    assert ours < A._ChunkedSoftmaxCE.apply(h, v, b, t, 64, False, None)  # fewer competitors, lower loss
    assert all(torch.allclose(x, y) for x, y in zip(g1, g2))


def test_scores_are_states_times_item_matrix_plus_bias():
    model = A.SequenceEncoder(N_ITEMS, small())
    with torch.no_grad():
        model.bias.uniform_()
    histories = [np.array([1, 2, 3]), np.array([7])]
    v, b = A.item_matrix(model)
    states = A.final_states(model, histories)
    assert v.shape == (N_ITEMS, 32) and b.shape == (N_ITEMS,) and states.shape == (2, 32)
    assert torch.allclose(A.scores(model, histories), states @ v.T + b)
    last = model.eval()(torch.from_numpy(A.pad_left(histories, 10)))[:, -1]
    assert torch.allclose(states, last, atol=1e-6)


def test_dser_inputs_change_the_model_only_where_switched_on():
    item_vec, content, user_vec = vectors(N_ITEMS, 16, 1), vectors(N_ITEMS, 8, 2), vectors(5, 16, 3)
    hist, users = [np.array([2, 4, 6]), np.array([1, 3])], np.array([0, 4])

    def build(**switches) -> A.SequenceEncoder:
        return A.SequenceEncoder(N_ITEMS, small(zero_proj=False, **switches), item_vec, content, user_vec).eval()

    base = build()
    plain = A.SequenceEncoder(N_ITEMS, small(zero_proj=False)).eval()  # vectors given, switches off: no effect
    assert torch.equal(A.item_matrix(base)[0], A.item_matrix(plain)[0])
    assert torch.equal(A.final_states(base, hist, users), A.final_states(plain, hist))
    for switch, items_change, states_change in (("item_init", True, True), ("item_features", True, True),
                                                ("content", True, True), ("long_term", False, True)):
        on = build(**{switch: True})
        same_items = torch.equal(A.item_matrix(on)[0], A.item_matrix(base)[0])
        same_states = torch.allclose(A.final_states(on, hist, users), A.final_states(base, hist, users))
        assert same_items != items_change, switch
        assert same_states != states_change, switch
        # every parameter the switch does not add starts from the same values
        shared = {k: v for k, v in base.state_dict().items() if not (switch == "item_init" and k == "item_emb.weight")}
        assert all(torch.equal(on.state_dict()[k], v) for k, v in shared.items()), switch
    with pytest.raises(ValueError):
        A.SequenceEncoder(N_ITEMS, small(content=True))


def test_untied_output_and_item_init_at_another_size():
    model = A.SequenceEncoder(N_ITEMS, dataclasses.replace(small(), tied=False, item_init=True),
                              vectors(N_ITEMS, 12, 0))
    assert model.out_emb is not None
    assert not torch.equal(A.item_matrix(model)[0], model.item_emb.weight[1:])
    A.fit(model, successor_sequences(40))


def test_zero_projections_start_as_the_plain_encoder_then_learn():
    item_vec, content, user_vec = vectors(N_ITEMS, 16, 1), vectors(N_ITEMS, 8, 2), vectors(300, 16, 3)
    seqs, users = successor_sequences(300), np.arange(300)
    hist = [np.array([2, 4, 6]), np.array([1, 3])]
    plain = A.SequenceEncoder(N_ITEMS, small())
    on = A.SequenceEncoder(N_ITEMS, small(item_features=True, content=True, long_term=True),
                           item_vec, content, user_vec)
    assert torch.equal(A.scores(plain, hist), A.scores(on, hist, users[:2]))
    A.fit(plain, seqs)
    A.fit(on, seqs, users)
    assert on.content_proj.weight.abs().sum() > 0 and on.user_proj.weight.abs().sum() > 0
    assert not torch.allclose(A.scores(plain, hist), A.scores(on, hist, users[:2]))
