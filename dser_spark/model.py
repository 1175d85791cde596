"""The DSER network (torch): GMF on ID embeddings + MLP on Doc2Vec vectors + recency.

score(u, i) = w · [gmf(u, i), mlp(u, i)] + b + r · (recent_u · out_i)

The Doc2Vec inputs are frozen buffers, so the state dict alone holds all a
scorer needs. Switching branches off gives the GMF, MLP and NeuMF baselines.
The MLP's first layer is separable into a user half and an item half, which
``user_part`` / ``item_part`` / ``score_block`` use for all-pairs scoring.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dser_spark.config import ModelConfig


@dataclass
class Inputs:
    """Frozen Doc2Vec inputs, rows aligned with the dense user / item indexes."""

    user_vectors: torch.Tensor    # (U, d)
    recent_vectors: torch.Tensor  # (U, d)
    item_vectors: torch.Tensor    # (I, d)
    item_out_vectors: torch.Tensor  # (I, d)
    content_vectors: torch.Tensor   # (I, c)


class DSER(nn.Module):
    """GMF + MLP + recency residual over frozen Doc2Vec inputs."""

    def __init__(self, inputs: Inputs, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        for name in ("user_vectors", "recent_vectors", "item_vectors", "item_out_vectors", "content_vectors"):
            self.register_buffer(name, getattr(inputs, name).float().contiguous())
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
        self.recency_weight = nn.Parameter(torch.tensor(float(cfg.recency_init)))

    # -- per-side parts (computed once per user / once per item when scoring) --
    def user_part(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GMF embedding, first-MLP-layer user half, recent vector of users ``u``."""
        return self.user_emb(u), self.mlp_user(self.user_vectors[u]), self.recent_vectors[u]

    def item_part(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GMF embedding, first-MLP-layer item half, output vector of items ``i``."""
        feats = torch.cat([self.item_vectors[i], self.content_vectors[i]], dim=-1)
        return self.item_emb(i), self.mlp_item(feats), self.item_out_vectors[i]

    def _fusion_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The output unit's weights on the GMF part and on the MLP part."""
        w = self.out.weight[0]
        g = self.cfg.gmf_dim if self.cfg.use_gmf else 0
        return w[:g], w[g:]

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Logits for aligned (user, item) index pairs."""
        gu, hu, ru = self.user_part(u)
        gi, hi, oi = self.item_part(i)
        w_gmf, w_mlp = self._fusion_weights()
        logit = self.out.bias.repeat(u.shape[0])
        if self.cfg.use_gmf:
            logit = logit + (gu * gi) @ w_gmf
        if self.cfg.use_mlp:
            logit = logit + self.tower(torch.relu(hu + hi)) @ w_mlp
        if self.cfg.use_recency:
            logit = logit + self.recency_weight * (ru * oi).sum(-1)
        return logit

    def score_block(self, users: tuple[torch.Tensor, ...], items: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logits (B, N) for every pair of a user block and an item block of parts.

        GMF and recency are matrix products; only the MLP tower runs per pair.
        """
        gu, hu, ru = users
        gi, hi, oi = items
        w_gmf, w_mlp = self._fusion_weights()
        logit = self.out.bias.repeat(gu.shape[0], gi.shape[0])
        if self.cfg.use_gmf:
            logit = logit + (gu * w_gmf) @ gi.T
        if self.cfg.use_mlp:
            logit = logit + self.tower(torch.relu(hu[:, None, :] + hi[None, :, :])) @ w_mlp
        if self.cfg.use_recency:
            logit = logit + self.recency_weight * (ru @ oi.T)
        return logit


def from_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> DSER:
    """Rebuild a model from its saved state dict (shapes come from the tensors)."""
    inputs = Inputs(*(state[k] for k in ("user_vectors", "recent_vectors", "item_vectors",
                                         "item_out_vectors", "content_vectors")))
    model = DSER(inputs, cfg)
    model.load_state_dict(state)
    return model.eval()
