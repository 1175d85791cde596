"""Refits side by side: the same models as one after another, on either encoder (no Spark: the fits read only
``fit_data``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dser_spark import selection
from dser_spark.config import load_config
from dser_spark.model import Inputs
from dser_spark.sequences import EVAL, SERVE
from dser_spark.train import FitData

USERS, ITEMS = 40, 30


def fit_data(seed: int) -> FitData:
    """Users walking the items in order from a random start, with Doc2Vec-like inputs."""
    rng = np.random.default_rng(seed)
    item_ids = np.arange(11, 11 + ITEMS)
    pos = [item_ids[(rng.integers(ITEMS) + np.arange(rng.integers(4, 14))) % ITEMS] for _ in range(USERS)]
    g = torch.Generator().manual_seed(seed)
    inputs = Inputs(torch.randn(USERS, 8, generator=g), None, torch.randn(ITEMS, 8, generator=g),
                    torch.randn(ITEMS, 8, generator=g), torch.randn(ITEMS, 4, generator=g))
    return FitData(np.arange(101, 101 + USERS), item_ids, pos, inputs, [1, 3])


class Scopes:
    """The part of ``selection.FitSource`` a refit reads: each scope its own data."""

    def __init__(self):
        self.data = {EVAL: fit_data(0), SERVE: fit_data(1)}
        self.reads: list[str] = []

    def fit_data(self, scope: str) -> FitData:
        self.reads.append(scope)
        return self.data[scope]


ENCODERS = {
    "doc2vec": ["model.gmf_dim=8", "model.mlp_layers=[16,8]", "train.batch_size=32"],
    "attention": ["model.encoder=attention", "model.attention.dim=16", "model.attention.max_len=8",
                  "train.loss=full_softmax", "train.batch_size=8"],
}


@pytest.fixture(autouse=True)
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def config(encoder: str, threads: int):
    return load_config(None, ["split.validation=false", "train.epochs=3", "train.lr=0.01",
                              "train.show_progress=false", f"train.threads={threads}", *ENCODERS[encoder]])


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_refits_side_by_side_equal_the_same_fits_one_after_another(encoder, tmp_path):
    alone, _ = selection.select_and_refit(config(encoder, 1), Scopes(), config(encoder, 1).model, "DSER",
                                          [EVAL, SERVE], str(tmp_path / "alone"), cores=1)
    source = Scopes()
    torch.set_num_threads(2)
    together, selected = selection.select_and_refit(config(encoder, 2), source, config(encoder, 2).model, "DSER",
                                                    [EVAL, SERVE], str(tmp_path / "together"), cores=2)
    assert selected is None and set(together) == {EVAL, SERVE}
    assert source.reads[:2] == [EVAL, SERVE]  # read here first, not by the threads
    assert torch.get_num_threads() == 2  # the caller's again
    for scope in (EVAL, SERVE):
        a, b = alone[scope].model.state_dict(), together[scope].model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), scope
        assert [h["loss"] for h in alone[scope].history] == [h["loss"] for h in together[scope].history]
        assert together[scope].history[-1]["loss"] < together[scope].history[0]["loss"]
        assert together[scope].best_epoch == 3
    first = together[EVAL].model.state_dict()
    assert not all(torch.equal(first[k], together[SERVE].model.state_dict()[k]) for k in first)  # two fits


def test_one_core_or_one_scope_fits_in_this_thread(tmp_path):
    cfg = config("doc2vec", 2)
    source = Scopes()
    fits, _ = selection.select_and_refit(cfg, source, cfg.model, "DSER", [EVAL], str(tmp_path), cores=2)
    assert list(fits) == [EVAL] and source.reads == [EVAL]
