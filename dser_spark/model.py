"""The DSER network (torch): GMF on ID embeddings + MLP on Doc2Vec vectors + taste terms.

score(u, i) = w · [gmf(u, i), mlp(u, i)] + b
              + (Σ_w a_w · recent_w(u) + a_long · long_u) · out_i + bias_i

``recent_w(u)`` is the mean Doc2Vec item vector of the user's last ``k_w``
items (short-term taste, one per recent window), ``long_u`` the user's
paragraph vector (long-term taste) and ``out_i`` the item's Doc2Vec output
vector (``syn1neg``). The taste weights start at ``a = recency_init`` on the
first window and 0 elsewhere, the item bias and the fusion unit at 0, so the
untrained model *is* the recency score, and training adds to it (a residual)
instead of washing it out.

The Doc2Vec inputs are frozen buffers, so the state dict alone holds all a
scorer needs. Switching parts off gives the GMF, MLP, NeuMF and recency
baselines (``baseline_config``). The MLP's first layer is separable into a
user half and an item half, and the taste terms are one dot product, which
``user_part`` / ``item_part`` expose for all-pairs scoring (``scoring.Kernel``).
"""
from __future__ import annotations

import dataclasses
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dser_spark.config import ModelConfig

_SEEDING = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generator, seeded with ``seed`` and held for the block: a model built inside draws the
    same initial weights even while a fit in another thread (side-by-side refits) builds its own."""
    with _SEEDING:
        torch.manual_seed(seed)
        yield


@dataclass
class Inputs:
    """Frozen Doc2Vec inputs, rows aligned with the dense user / item indexes.

    ``recent_vectors`` is (U, d) for one recent window or (U, W, d) for
    ``windows`` (W,) of them; ``windows`` defaults to a single window. It is a
    function of each user's history: ``train.FitData`` computes it (None until then).
    """

    user_vectors: torch.Tensor    # (U, d) long-term: the paragraph vector
    recent_vectors: torch.Tensor | None  # (U, d) or (U, W, d) short-term: mean item vector of the last k_w items
    item_vectors: torch.Tensor    # (I, d)
    item_out_vectors: torch.Tensor  # (I, d)
    content_vectors: torch.Tensor   # (I, c)
    windows: torch.Tensor | None = None  # (W,) the recent window sizes k_w


BUFFERS = ("user_vectors", "recent_vectors", "item_vectors", "item_out_vectors", "content_vectors", "windows")


WINDOW_ROWS = 8192  # context rows window_means gathers at once: its temporaries stay ~(K + 3 W) d floats a row


def newest_first(histories: list[np.ndarray], depth: int) -> torch.Tensor:
    """(B, depth) the last ``depth`` entries of each history (dense indexes), newest first, -1 where it is
    shorter: one gather for all histories."""
    lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
    taken = np.minimum(lengths, depth)
    rows = np.repeat(np.arange(len(histories)), taken)
    back = np.arange(taken.sum()) - np.repeat(np.cumsum(taken) - taken, taken)  # 0 = the newest
    flat = np.concatenate([np.empty(0, dtype=np.int64), *histories]).astype(np.int64, copy=False)
    context = torch.full((len(histories), depth), -1, dtype=torch.long)
    newest = np.repeat(np.cumsum(lengths), taken) - 1 - back  # positions in ``flat``
    context[torch.from_numpy(rows), torch.from_numpy(back)] = torch.from_numpy(flat[newest])
    return context


def window_means(item_vectors: torch.Tensor, context: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """(B, W, d) mean item vector of the first ``k_w`` entries of each context row.

    ``context`` (B, K) holds item indexes newest first, -1 where the history
    is shorter; a window over an empty history is the zero vector. The
    windows' sums are one matrix product of a (W, K) 0/1 matrix with the
    gathered vectors laid out (K, B * d). Only the context's rows are touched
    (no copy of the item table: a training step costs the same at any catalogue size).
    Every user's windows at once (a fit's serving vectors) are made ``WINDOW_ROWS`` rows at a time.
    """
    d, (b, k) = item_vectors.shape[1], context.shape
    if k == 0:
        return item_vectors.new_zeros((b, len(windows), d))
    if b > WINDOW_ROWS:
        out = item_vectors.new_empty((b, len(windows), d))
        for start in range(0, b, WINDOW_ROWS):
            out[start:start + WINDOW_ROWS] = window_means(item_vectors, context[start:start + WINDOW_ROWS], windows)
        return out
    positions = torch.arange(k, device=context.device)
    take = (positions[None, :] < windows.clamp(max=k)[:, None]).to(item_vectors.dtype)  # (W, K)
    ok = context >= 0
    vecs = F.embedding(context.clamp(min=0).T, item_vectors).masked_fill_(~ok.T[..., None], 0.0)  # (K, B, d)
    sums = (take @ vecs.reshape(k, b * d)).view(len(windows), b, d)
    counts = (take @ ok.T.to(item_vectors.dtype)).clamp(min=1.0)       # (W, B)
    return (sums / counts[..., None]).transpose(0, 1).contiguous()


class DSER(nn.Module):
    """GMF + MLP + residual long/short-term taste over frozen Doc2Vec inputs."""

    def __init__(self, inputs: Inputs, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        recent = inputs.recent_vectors
        if recent is None:
            raise ValueError("Inputs.recent_vectors is not computed yet (build the inputs through FitData)")
        if recent.dim() == 2:
            recent = recent[:, None, :]
        windows = inputs.windows if inputs.windows is not None else torch.zeros(recent.shape[1], dtype=torch.long)
        for name, value in (("user_vectors", inputs.user_vectors), ("recent_vectors", recent),
                            ("item_vectors", inputs.item_vectors), ("item_out_vectors", inputs.item_out_vectors),
                            ("content_vectors", inputs.content_vectors)):
            self.register_buffer(name, value.float().contiguous())
        self.register_buffer("windows", torch.as_tensor(windows, dtype=torch.long).contiguous())
        n_users, n_items = self.user_vectors.shape[0], self.item_vectors.shape[0]
        d_user = self.user_vectors.shape[1]
        d_item = self.item_vectors.shape[1] + self.content_vectors.shape[1]
        self.user_emb = nn.Embedding(n_users, cfg.gmf_dim)
        self.item_emb = nn.Embedding(n_items, cfg.gmf_dim)
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        sizes = cfg.mlp_layers
        self.mlp_user = nn.Linear(d_user, sizes[0])
        self.mlp_item = nn.Linear(d_item, sizes[0], bias=False)
        tower: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            tower += [nn.Linear(a, b), nn.ReLU()]
        self.tower = nn.Sequential(*tower)
        fused = (cfg.gmf_dim if cfg.use_gmf else 0) + (sizes[-1] if cfg.use_mlp else 0)
        self.out = nn.Linear(max(fused, 1), 1)  # recency-only models keep just the bias
        if cfg.use_recency:  # residual: the untrained network adds nothing to the taste score
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        n_windows = self.recent_vectors.shape[1]
        init = torch.zeros(n_windows)
        init[0] = float(cfg.recency_init)
        self.recency_weights = nn.Parameter(init)
        self.long_term_weight = nn.Parameter(torch.tensor(0.0))
        self.item_bias = nn.Parameter(torch.zeros(n_items))

    # -- the short-term state from a history (training, serving, new users) --
    @property
    def context_length(self) -> int:
        """Items of a history, newest first, that ``recent`` reads."""
        return max(1, int(self.windows.max()))

    def recent(self, context: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, W, d) the recent windows of ``context`` (B, K): item indexes newest first, -1 past the start.
        ``users`` (the contexts' owners) is not used: window means are cheaper than a cache lookup would be."""
        return window_means(self.item_vectors, context, self.windows)

    # -- per-side parts (computed once per user / once per item when scoring) --
    def taste_vector(self, u: torch.Tensor, recent: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) Σ_w a_w recent_w + a_long long: the user side of the taste dot product."""
        recent = self.recent_vectors[u] if recent is None else recent
        vec = (recent * self.recency_weights[None, :, None]).sum(1)
        if self.cfg.use_long_term:
            vec = vec + self.long_term_weight * self.user_vectors[u]
        return vec

    def user_part(self, u: torch.Tensor, recent: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GMF embedding, first-MLP-layer user half, linear taste part of users ``u``.

        ``recent`` (B, W, d) replaces the stored recent vectors (training on
        the history before each position). The taste part ends with a 1 that
        meets the item bias.
        """
        n = u.shape[0]
        lin = [self.taste_vector(u, recent) if self.cfg.use_recency
               else self.user_vectors.new_zeros((n, self.item_out_vectors.shape[1]))]
        if self.cfg.item_bias:
            lin.append(self.user_vectors.new_ones((n, 1)))
        return self.user_emb(u), self.mlp_user(self.user_vectors[u]), torch.cat(lin, dim=-1)

    def item_part(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GMF embedding, first-MLP-layer item half, linear part (output vector, bias) of items ``i``."""
        feats = torch.cat([F.embedding(i, self.item_vectors), F.embedding(i, self.content_vectors)], dim=-1)
        lin = [F.embedding(i, self.item_out_vectors)]
        if self.cfg.item_bias:
            lin.append(self.item_bias[i][..., None])
        return self.item_emb(i), self.mlp_item(feats), torch.cat(lin, dim=-1)

    def _fusion_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The output unit's weights on the GMF part and on the MLP part."""
        w = self.out.weight[0]
        g = self.cfg.gmf_dim if self.cfg.use_gmf else 0
        return w[:g], w[g:]

    def score_items(self, users: tuple[torch.Tensor, ...], items: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits (B, M) of user parts (B, ·) against per-user item parts (B, M, ·)."""
        gu, hu, lu = users
        gi, hi, li = items
        w_gmf, w_mlp = self._fusion_weights()
        logit = self.out.bias + (lu[:, None, :] * li).sum(-1)
        if self.cfg.use_gmf:
            logit = logit + (gu[:, None, :] * gi) @ w_gmf
        if self.cfg.use_mlp:
            logit = logit + self.tower(torch.relu(hu[:, None, :] + hi)) @ w_mlp
        return logit

    def forward(self, u: torch.Tensor, i: torch.Tensor, recent: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for aligned (user, item) index pairs."""
        items = tuple(p[:, None] for p in self.item_part(i))
        return self.score_items(self.user_part(u, recent), items)[:, 0]


def baseline_config(cfg: ModelConfig, name: str) -> ModelConfig:
    """The DSER module with parts switched off: GMF, MLP, NeuMF, or Recency (untrained)."""
    parts = {"GMF": (True, False, False), "MLP": (False, True, False), "NeuMF": (True, True, False),
             "Recency": (False, False, True), "DSER": (cfg.use_gmf, cfg.use_mlp, cfg.use_recency)}
    if name not in parts:
        raise ValueError(f"unknown model variant {name!r} (known: {', '.join(parts)})")
    gmf, mlp, rec = parts[name]
    if name == "Recency":  # the untrained score: main window only, no long-term, no bias
        return dataclasses.replace(cfg, encoder="doc2vec", use_gmf=False, use_mlp=False, use_recency=True,
                                   use_long_term=False, item_bias=False)
    if name != "DSER":
        return dataclasses.replace(cfg, encoder="doc2vec", use_gmf=gmf, use_mlp=mlp, use_recency=rec,
                                   use_long_term=False, item_bias=False)
    return cfg


def from_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> DSER:
    """Rebuild a model from its saved state dict (shapes come from the tensors)."""
    inputs = Inputs(*(state[k] for k in BUFFERS))
    model = DSER(inputs, cfg)
    model.load_state_dict(state)
    return model.eval()
