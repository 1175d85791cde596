"""No test interaction reaches Doc2Vec, embeddings, recency windows or negative exclusion sets.

Every user's test item (and validation item) is an item nobody else touched,
so any trace of it in a fit is a leak that cannot hide behind other users.
"""
import csv
import datetime as dt

import numpy as np
import pytest
import torch

from dser_spark import models, pipeline, sequences, tables
from dser_spark.artifacts import load_from_bytes
from dser_spark.sequences import EVAL, SELECT, SERVE
from dser_spark.model import window_means
from dser_spark.train import epoch_groups

DT = "2026-11-25"
N_USERS = 12


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    raw = root / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    with open(raw / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        w.writerows([(m, f"Movie {m} (2001)", "Drama") for m in list(range(1, 31)) + list(range(100, 100 + N_USERS))
                     + list(range(200, 200 + N_USERS))])
    start = int(dt.datetime(2015, 1, 1).timestamp())
    with open(raw / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for u in range(1, N_USERS + 1):
            items = list(rng.choice(np.arange(1, 31), size=10, replace=False)) + [200 + u - 1, 100 + u - 1]
            for j, m in enumerate(items):  # ... then the validation-only item, then the test-only item
                w.writerow([u, int(m), 4.0, start + 3600 * (j + 24 * u)])
    from dser_spark.config import load_config
    cfg = load_config(None, [f"data.path={raw}", "data.format=ml-latest", f"warehouse.root={root / 'wh'}",
                             "embed.epochs=3", "embed.content_epochs=2", "train.epochs=1", "train.show_progress=false",
                             "recent.windows=[1, 2]", "evaluate.baselines=[ItemPop]", "train.refit_all=true"])
    for stage in ("prepare", "sequences", "embed", "train"):
        pipeline.run_stage(spark, cfg, stage, DT)
    return cfg


def _held(scope):
    """Items each user's fit of ``scope`` must not see."""
    test = {u: 100 + u - 1 for u in range(1, N_USERS + 1)}
    val = {u: 200 + u - 1 for u in range(1, N_USERS + 1)}
    return {SELECT: [test, val], EVAL: [test]}[scope]


@pytest.mark.parametrize("scope", [SELECT, EVAL])
def test_held_out_items_never_reach_a_fit(spark, warehouse, scope):
    cfg = warehouse
    data = pipeline.WarehouseData(spark, cfg).fit_data(scope)
    held = set().union(*(set(h.values()) for h in _held(scope)))
    held_idx = torch.from_numpy(np.searchsorted(data.item_ids, sorted(held)))
    assert np.isin(sorted(held), data.item_ids).all()  # they are in the universe ...
    for pos in data.user_pos:                          # ... but in no user's fit positives
        assert not set(pos.tolist()) & held
    # Doc2Vec never saw them: no trained token vector, no output vector
    assert torch.count_nonzero(data.inputs.item_vectors[held_idx]) == 0
    assert torch.count_nonzero(data.inputs.item_out_vectors[held_idx]) == 0
    # recency windows are built from the fit history only
    assert not set(data.last_items().flatten().tolist()) & set(held_idx.tolist())
    expected = window_means(data.inputs.item_vectors, data.last_items(), torch.tensor([3, 1, 2]))
    assert torch.allclose(data.inputs.recent_vectors, expected)
    # the stored model of this scope (only refits are stored) holds the same inputs
    if scope == EVAL:
        trained = load_from_bytes(models.files(spark, cfg, models.latest(spark, cfg), scope))
        assert torch.count_nonzero(trained.model.item_out_vectors[held_idx]) == 0
        assert torch.allclose(trained.model.recent_vectors, expected)
    # negatives exclude only the fit positives: a user's own held-out item is drawn as a negative
    drawn = {u: set() for u in range(len(data.user_ids))}
    for epoch in range(5):
        users, items = epoch_groups(data, cfg.train.negatives, cfg.seed, epoch)
        for u, row in zip(users.tolist(), items[:, 1:].tolist()):
            drawn[u].update(row)
    own = [int(np.searchsorted(data.item_ids, _held(scope)[0][int(uid)])) in drawn[r]
           for r, uid in enumerate(data.user_ids)]
    assert sum(own) >= len(own) - 2


@pytest.mark.parametrize("scope", [SELECT, EVAL])
def test_recent_data_holds_each_users_last_positives_and_the_same_recent_vectors(spark, warehouse, scope):
    """What the untrained Recency baseline is built from: the fit's users, inputs and recent vectors, but
    only the last few positives of each user (not every positive on the driver)."""
    data = pipeline.WarehouseData(spark, warehouse)
    full, recent = data.fit_data(scope), data.recent_data(scope)
    np.testing.assert_array_equal(recent.user_ids, full.user_ids)
    np.testing.assert_array_equal(recent.item_ids, full.item_ids)
    assert recent.windows == full.windows
    for short, whole in zip(recent.user_pos, full.user_pos):  # a suffix, at least the longest window
        assert min(len(whole), max(full.windows)) <= len(short) <= max(full.windows) + 2
        np.testing.assert_array_equal(short, whole[len(whole) - len(short):])
    assert sum(map(len, recent.user_pos)) < sum(map(len, full.user_pos))  # it did cut
    assert torch.equal(recent.last_items(), full.last_items())
    assert torch.equal(recent.inputs.recent_vectors, full.inputs.recent_vectors)
    assert torch.equal(recent.inputs.user_vectors, full.inputs.user_vectors)


def test_each_scope_sees_exactly_its_splits(spark, warehouse):
    """The scopes cut from the sequences table (what Doc2Vec and the fits read) and the scopes of the
    splits table (what ALS reads) hold the same positives: select = train, eval = + validation, serve = all."""
    cfg = warehouse
    splits = tables.read_table(spark, cfg, "splits")
    data = pipeline.WarehouseData(spark, cfg)
    for scope, allowed in ((SELECT, {"train"}), (EVAL, {"train", "validation"}),
                           (SERVE, {"train", "validation", "test"})):
        pos = sequences.scope_positives(splits, scope).toPandas()
        assert set(pos["split"]) == allowed
        user_ids, seqs = data.scope_sequences(scope)
        from_sequences = {(int(u), int(i)) for u, s in zip(user_ids, seqs) for i in s}
        assert from_sequences == set(zip(pos.user_id, pos.item_id))
        for u, s in zip(user_ids, seqs):  # in time order
            ts = pos[pos.user_id == u].set_index("item_id").loc[s, "ts"]
            assert ts.is_monotonic_increasing
    assert len(splits.filter("split = 'test'").collect()) == N_USERS
