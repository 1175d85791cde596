"""Refits side by side: the same models as one after another, on either encoder (no Spark: the fits read only
``fit_data``)."""
from __future__ import annotations

import pytest
import torch

import walks
from dser_spark import selection
from dser_spark.config import load_config
from dser_spark.sequences import EVAL, SERVE
from dser_spark.train import FitData

USERS, ITEMS = 40, 30


class Scopes:
    """The part of ``selection.FitSource`` a refit reads: each scope its own data."""

    def __init__(self):
        self.data = {scope: walks.fit_data(seed, USERS, ITEMS, longest=14, windows=(1, 3))
                     for seed, scope in enumerate([EVAL, SERVE])}
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
                                          [EVAL, SERVE], str(tmp_path / "alone"))
    source = Scopes()
    torch.set_num_threads(2)
    together, selected = selection.select_and_refit(config(encoder, 2), source, config(encoder, 2).model, "DSER",
                                                    [EVAL, SERVE], str(tmp_path / "together"))
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


@pytest.mark.parametrize("threads, default, scopes", [(2, 2, [EVAL]), (0, 1, [EVAL, SERVE]), (1, 2, [EVAL, SERVE])])
def test_one_scope_or_one_thread_fits_one_after_another(threads, default, scopes, tmp_path):
    cfg = config("doc2vec", threads)
    torch.set_num_threads(default)  # torch's default threads, what train.threads 0 uses
    source = Scopes()
    fits, _ = selection.select_and_refit(cfg, source, cfg.model, "DSER", scopes, str(tmp_path))
    assert list(fits) == scopes and source.reads == scopes  # each read by its fit, none ahead


@pytest.mark.parametrize("sets, scopes, threads, expected", [
    ([], 2, 2, 2), ([], 3, 2, 2), ([], 3, 8, 3), ([], 2, 1, 1), ([], 1, 2, 1), (["train.distributed=true"], 2, 2, 1),
])
def test_refits_at_once_share_the_threads_of_one_fit(sets, scopes, threads, expected):
    assert selection.refits_at_once(load_config(None, sets), scopes, threads) == expected


def test_a_fit_uses_train_threads_else_torchs_default():
    torch.set_num_threads(3)
    assert selection.fit_threads(load_config(None, [])) == 3
    assert selection.fit_threads(load_config(None, ["train.threads=1"])) == 1


def test_refits_run_side_by_side_only_where_the_memory_holds_them():
    one_fit = selection.FIT_BYTES_PER_POSITIVE * 1_000_000
    assert selection.fits_in_memory(1_000_000, 2 * one_fit) == 2
    assert selection.fits_in_memory(1_000_000, 2 * one_fit - 1) == 1
    assert selection.fits_in_memory(1_000_000, None) == 0  # unknown: one after another
    free = selection.free_memory()
    assert free is None or 0 < free < 2**50
