"""Users the model does not know: Doc2Vec vectors inferred from their history.

A user who arrived after training but has a history of items the model
knows gets a paragraph vector inferred against the model's frozen output
vectors (what gensim's ``infer_vector`` does, from stored arrays only), recent
windows from that history, and a neutral GMF part. Users without a usable
history get the popularity list (``recommend``).
"""
from __future__ import annotations

import numpy as np
import torch

from dser_spark.config import EmbedConfig
from dser_spark.model import DSER, newest_first


def vector_user_parts(model: DSER, long: torch.Tensor, recent: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``model.user_part`` for users without a row: from their Doc2Vec vectors, GMF part neutral (zero).

    ``long`` (B, d) is the paragraph vector, ``recent`` (B, W, d) the recent windows.
    """
    cfg, n = model.cfg, long.shape[0]
    if cfg.use_recency:
        taste = (recent * model.recency_weights[None, :, None]).sum(1)
        if cfg.use_long_term:
            taste = taste + model.long_term_weight * long
    else:
        taste = long.new_zeros((n, model.item_out_vectors.shape[1]))
    lin = [taste, long.new_ones((n, 1))] if cfg.item_bias else [taste]
    return long.new_zeros((n, cfg.gmf_dim)), model.mlp_user(long), torch.cat(lin, 1)


def infer_vectors(histories: list[np.ndarray], out_vectors: np.ndarray, counts: np.ndarray, epochs: int,
                  negative: int, seeds: list[list[int]], alpha: float = 0.025, min_alpha: float = 1e-4
                  ) -> np.ndarray:
    """PV-DBOW paragraph vectors of item-index sequences against frozen output vectors.

    What gensim's ``Doc2Vec.infer_vector`` does, from stored arrays only: a
    small random start, then per epoch and per item one negative-sampling
    step (negatives from counts^0.75) with a linearly decaying rate.
    """
    dim = out_vectors.shape[1]
    weights = np.asarray(counts, dtype=np.float64) ** 0.75
    probs = weights / weights.sum()
    labels = np.zeros(negative + 1, dtype=np.float32)
    labels[0] = 1.0
    rates = np.linspace(alpha, min_alpha, epochs) if epochs > 1 else np.array([alpha])
    out = np.zeros((len(histories), dim), dtype=np.float32)
    for row, (hist, seed) in enumerate(zip(histories, seeds)):
        rng = np.random.default_rng(seed)
        vec = ((rng.random(dim) - 0.5) / dim).astype(np.float32)
        negs = rng.choice(len(probs), size=(epochs, len(hist), negative), p=probs)
        for epoch, rate in enumerate(rates):
            for item, drawn in zip(hist, negs[epoch]):
                targets = out_vectors[np.concatenate(([item], drawn))]
                grad = (labels - 1.0 / (1.0 + np.exp(-(targets @ vec)))) * rate
                grad[1:][drawn == item] = 0.0
                vec += grad @ targets
        out[row] = vec
    return out


def inferred_user_parts(model: DSER, histories: list[np.ndarray], item_counts: np.ndarray, embed: EmbedConfig,
                        seed: int, user_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """User parts of new users from their histories (dense item indexes the model's Doc2Vec knows, oldest
    first): an inferred paragraph vector (seeded by (seed, user)) and the recent windows."""
    context = newest_first(histories, model.context_length)
    if model.cfg.encoder == "attention" and model.encoder.user_proj is None:  # the state is the history's alone
        return model.new_user_parts(context, None)
    long = torch.from_numpy(infer_vectors(histories, model.item_out_vectors.numpy(), item_counts, embed.epochs,
                                          max(1, embed.negative), [[seed, int(u) % 2 ** 63] for u in user_ids]))
    if model.cfg.encoder == "attention":
        return model.new_user_parts(context, long)
    return vector_user_parts(model, long, model.recent(context))
