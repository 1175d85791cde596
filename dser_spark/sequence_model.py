"""DSER with the attention encoder (``model.encoder: attention``): the model the pipeline fits, stores, scores.

score(u, i) = h_u . v_i + b_i

``h_u`` is the state of ``attention.SequenceEncoder`` after the user's most
recent ``max_len`` items (plus the projected Doc2Vec paragraph vector with
``long_term``); ``v_i`` is the item's output vector (its ID embedding, started
from the Doc2Vec item vector with ``item_init``, plus the projected Doc2Vec and
content vectors where switched on) and ``b_i`` its bias.

``SequenceDSER`` has the interface of ``model.DSER`` that scoring, serving and
evaluation use: ``user_part`` / ``item_part`` with empty GMF and MLP parts and
the state as the linear part, ``context_length`` / ``recent`` to turn a history
into a state, and the frozen Doc2Vec inputs (new users' paragraph vectors are
inferred against them). So ``scoring.Kernel`` scores it as one matrix product
with a running top-K, and every stage serves it as it serves DSER. ``SASRec``
is the same model without any Doc2Vec input (``baseline``).

``fit`` trains it next-item at every position (``attention.epochs``) with early
stopping on the validation metric, as ``train.fit`` does for DSER.
"""
from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from dser_spark import attention
from dser_spark.artifacts import Trained
from dser_spark.config import ModelConfig, TrainConfig
from dser_spark.model import BUFFERS, Inputs, newest_first

log = logging.getLogger("dser_spark")

SASREC = "SASRec"


def params(cfg: ModelConfig, train: TrainConfig, seed: int, epochs: int | None = None) -> attention.AttentionParams:
    """The encoder's hyperparameters from ``model.attention`` and ``train``."""
    a = cfg.attention
    return attention.AttentionParams(
        max_len=a.max_len, dim=a.dim, blocks=a.blocks, heads=a.heads, ffn_dim=a.ffn_dim, dropout=a.dropout,
        item_init=a.item_init, item_features=a.item_features, content=a.content, long_term=a.long_term,
        loss="full" if train.loss == "full_softmax" else "sampled", negatives=max(train.negatives, 1),
        epochs=train.epochs if epochs is None else epochs, batch_size=train.batch_size, lr=train.lr,
        warmup=a.warmup_steps, schedule=a.schedule, weight_decay=train.weight_decay, bf16=a.bf16,
        mask_seen=a.mask_seen, seed=seed)


def baseline(cfg: ModelConfig) -> ModelConfig:
    """SASRec: the same encoder and training without any Doc2Vec input."""
    off = dataclasses.replace(cfg.attention, item_init=False, item_features=False, content=False, long_term=False)
    return dataclasses.replace(cfg, encoder="attention", attention=off)


class SequenceDSER(nn.Module):
    """The attention encoder behind DSER's scoring interface (see the module docstring)."""

    def __init__(self, inputs: Inputs, cfg: ModelConfig, p: attention.AttentionParams, last_items: torch.Tensor):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, encoder="attention", use_gmf=False, use_mlp=False)
        for name in ("user_vectors", "item_vectors", "item_out_vectors", "content_vectors"):
            self.register_buffer(name, getattr(inputs, name).float().contiguous())
        self.register_buffer("last_items", last_items.long().contiguous())      # (U, L) newest first, -1 pad
        self.register_buffer("user_scale", self.user_vectors.std().clamp(min=1e-8).reshape(1))
        self.register_buffer("states", torch.zeros(0, p.dim))                   # (U, d) once cached, else empty
        self.encoder = attention.SequenceEncoder(len(self.item_vectors), p, self.item_vectors.numpy(),
                                                 self.content_vectors.numpy(), self.user_vectors.numpy())
        # what the kernel adds to every logit: 0 (built without drawing from torch's generator: only the
        # encoder draws, under model.seeded)
        self.out = nn.utils.skip_init(nn.Linear, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.out.requires_grad_(False)
        self.tower = nn.Sequential()         # no MLP tower

    # -- the short-term state from a history --
    @property
    def context_length(self) -> int:
        return self.encoder.params.max_len

    def recent(self, context: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) states after ``context`` (B, K): dense item indexes newest first, -1 past the start (without
        the long-term term, which ``user_part`` / ``new_user_parts`` add). Rows of the model's ``users`` whose
        context is the stored history take the cached state (``cache_states``); only the others are encoded."""
        if users is None or not len(self.states) or context.shape[1] != self.last_items.shape[1]:
            return attention.last_states(self.encoder, context.flip(1) + 1)  # oldest first, left-padded with PAD
        out = self.states[users].clone()
        changed = torch.nonzero(~(context == self.last_items[users]).all(1)).flatten()
        if len(changed):
            out[changed] = attention.last_states(self.encoder, context[changed].flip(1) + 1)
        return out

    def cache_states(self) -> None:
        """Compute and keep every user's state after their stored history: serving and evaluation then score
        the model's users without running the encoder. Call it again after the weights change."""
        self.states = attention.last_states(self.encoder, self.last_items.flip(1) + 1)

    def _long_term(self, vectors: torch.Tensor) -> torch.Tensor | float:
        """The projected paragraph vectors (B, d_user) -> (B, d) with ``long_term``; else 0."""
        if self.encoder.user_proj is None:
            return 0.0
        return self.encoder.user_proj(vectors / self.user_scale)

    # -- per-side parts, as DSER's (GMF and MLP parts are empty) --
    def user_part(self, u: torch.Tensor, recent: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(GMF, MLP half, linear part [h_u, 1]) of users ``u``; ``recent`` (B, d) replaces the state of their
        stored histories (computed once per distinct user)."""
        if recent is None and len(self.states):
            recent = self.states[u]
        elif recent is None:
            unique, inverse = torch.unique(u, return_inverse=True)
            recent = self.recent(self.last_items[unique])[inverse]
        return self._parts(recent + self._long_term(self.user_vectors[u]))

    def new_user_parts(self, context: torch.Tensor, long: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The user parts of users the model does not know: their state from ``context``, plus their inferred
        paragraph vectors ``long`` (needed with ``long_term`` only)."""
        state = self.recent(context)
        return self._parts(state if long is None else state + self._long_term(long))

    @staticmethod
    def _parts(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        empty = state.new_zeros((state.shape[0], 0))
        return empty, empty, torch.cat([state, state.new_ones((state.shape[0], 1))], 1)

    def item_part(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(GMF, MLP half, linear part [v_i, b_i]) of items ``i`` (dense indexes)."""
        v = self.encoder.item_side(i + 1, output=True)
        b = self.encoder.bias[i + 1] if self.encoder.bias is not None else v.new_zeros(i.shape)
        empty = v.new_zeros((*i.shape, 0))
        return empty, empty, torch.cat([v, b[..., None]], -1)

    def _fusion_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        empty = self.out.weight.new_zeros(0)
        return empty, empty

    def score_items(self, users: tuple[torch.Tensor, ...], items: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits (B, M) of user parts against per-user item parts (B, M, ·)."""
        return (users[2][:, None, :] * items[2]).sum(-1)

    def forward(self, u: torch.Tensor, i: torch.Tensor, recent: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for aligned (user, item) index pairs."""
        items = tuple(p[:, None] for p in self.item_part(i))
        return self.score_items(self.user_part(u, recent), items)[:, 0]


def from_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> SequenceDSER:
    """Rebuild a stored model (shapes from the tensors)."""
    inputs = Inputs(*(state.get(k) for k in BUFFERS))
    p = params(cfg, TrainConfig(), 0)
    model = SequenceDSER(inputs, cfg, p, state["last_items"])
    if "states" not in state:  # stored before states were cached
        model.load_state_dict({**state, "states": model.states})
        model.eval().cache_states()
        return model
    model.states = torch.empty_like(state["states"])  # cached (U, d), or (0, d): none
    model.load_state_dict(state)
    return model.eval()


def _sequences(user_pos: list[np.ndarray], item_ids: np.ndarray) -> list[np.ndarray]:
    """Each user's positives as dense item indexes, oldest first."""
    return [np.searchsorted(item_ids, np.asarray(p, dtype=np.int64)) for p in user_pos]


def fit(data, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int, label: str = "train",
        validate=None, epochs: int | None = None) -> Trained:
    """Train the attention model on ``data`` (a ``train.FitData``) next-item at every position.

    With ``validate`` the metric is computed before training and after each
    epoch; training stops after ``train.patience`` epochs without a gain and the
    best weights are kept. ``epochs`` overrides ``train.epochs`` (a refit).
    """
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    p = params(model_cfg, train_cfg, seed, epochs)
    sequences = _sequences(data.user_pos, data.item_ids)
    model = SequenceDSER(data.inputs, model_cfg, p, newest_first(sequences, p.max_len))
    history: list[dict] = []
    best_metric, best_epoch, best_state, bad = float("-inf"), 0, None, 0
    if validate is not None:
        best_metric = validate(model.eval())
        best_state = copy.deepcopy(model.state_dict())
        history.append({"epoch": 0, "loss": None, "samples": 0, "val_hr": best_metric, "seconds": 0.0})
        log.info("%s epoch 0 (starting weights): validation HR %.4f", label, best_metric)
    users = np.arange(len(sequences))
    for epoch, loss, seconds in attention.epochs(model.encoder, [s + 1 for s in sequences], users):
        entry = {"epoch": epoch, "loss": loss, "samples": int(sum(max(len(s) - 1, 0) for s in sequences)),
                 "seconds": seconds}
        model.eval()
        if validate is not None:
            entry["val_hr"] = validate(model)
            if entry["val_hr"] > best_metric:
                best_metric, best_epoch, bad = entry["val_hr"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        else:
            best_epoch = epoch
        history.append(entry)
        log.info("%s epoch %d/%d: loss %.4f%s (%.0fs)", label, epoch, p.epochs, loss,
                 f", validation HR {entry['val_hr']:.4f}" if "val_hr" in entry else "", seconds)
        if validate is not None and train_cfg.patience and bad >= train_cfg.patience:
            log.info("%s: early stop after epoch %d (best epoch %d, HR %.4f)", label, epoch, best_epoch, best_metric)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        for entry in history:
            entry["best"] = entry["epoch"] == best_epoch
    model.eval().cache_states()
    return Trained(model, data.user_ids, data.item_ids, history, best_epoch)
