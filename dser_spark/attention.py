"""A SASRec-style causal self-attention sequence encoder that carries DSER's Doc2Vec inputs.

Items are dense indexes ``1..n`` (0 pads). A user's most recent ``max_len``
items, left-padded, go through an item embedding + learned positions and
``blocks`` pre-norm causal self-attention blocks; the state at position t sees
items 0..t only. The score of item i for a state h is ``h . v_i + b_i``, where
``v_i`` is the output item vector, so all-user top-K is a matrix multiply
(``final_states`` and ``item_matrix``).

DSER's inputs, each switchable in ``AttentionParams``:

* ``item_init``: the Doc2Vec item vectors (rescaled) initialise the ID embedding;
* ``item_features``: the same vectors as frozen features, projected and added to
  the item representation (input and output side);
* ``content``: the content Doc2Vec vectors, projected and added likewise;
* ``long_term``: the user's paragraph vector, projected and added to every state.

Training is next-item at every position (``fit``), with a full softmax over all
items (``mask_seen``: without the items each state has seen, which are never
recommended) or a sampled softmax over shared negatives (``loss``); Adam, warmup, and
an optional cosine decay. With one torch thread and a seed it is deterministic.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dser_spark.model import seeded

PAD = 0


@dataclass
class AttentionParams:
    """Hyperparameters of the encoder and its training (to move into ``config.py``)."""

    max_len: int = 200          # L: most recent items a state sees
    windows: int = 1            # L-long windows of each user's history trained on, newest first (1: the last L)
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    ffn_dim: int = 0            # 0: same as dim (SASRec)
    dropout: float = 0.2
    tied: bool = True           # output item vectors = input item representation
    item_bias: bool = True
    item_init: bool = False     # Doc2Vec item vectors initialise the ID embedding
    item_features: bool = False  # frozen Doc2Vec item vectors, projected and added
    content: bool = False       # frozen content vectors, projected and added
    long_term: bool = False     # the user's paragraph vector, projected and added to the state
    zero_proj: bool = True      # the projections above start at 0 (the inputs are learned residuals)
    loss: str = "full"          # "full" softmax over all items, or "sampled" over shared negatives
    negatives: int = 256
    sampling: str = "uniform"   # negatives "uniform" or by "popularity" (counts ** 0.75)
    logq: bool = True           # subtract log sampling probability (sampled softmax correction)
    mask_seen: bool = False     # full softmax: items already in the state's window are not competitors
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 0             # steps of linear warmup
    schedule: str = "constant"  # "constant" or "cosine" decay to 0 over all steps
    weight_decay: float = 0.0
    bucket: bool = True         # batch users of similar length (less padding), batch order shuffled
    bf16: bool = False          # train in bfloat16 autocast, items scored in bfloat16 (faster on CPUs with bf16)
    seed: int = 42


def _standardised(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Float tensor scaled to unit overall standard deviation."""
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    t = t / t.std().clamp(min=1e-8)
    return t


class Dropout(nn.Module):
    """Inverted dropout whose mask comes from numpy's byte generator (``rng``, set by the encoder).

    ``torch``'s CPU dropout draws about 70 M numbers a second, which made it a
    quarter of an epoch; random bytes are ~20x cheaper. ``p`` is rounded to 1/256.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p, self.rng = p, np.random.default_rng(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut = round(self.p * 256)
        if not self.training or cut == 0:
            return x
        raw = torch.frombuffer(bytearray(self.rng.bytes(x.numel())), dtype=torch.uint8).view(x.shape)
        return x * (raw >= cut).to(x.dtype).mul_(256.0 / (256 - cut))


class Block(nn.Module):
    """Pre-norm causal self-attention + position-wise feed-forward, residual around both."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.attn_drop, self.drop = Dropout(dropout), Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``blocked`` (B, 1, T, T) is True where a query may not see a key. With ``last_only`` only the last
        position is a query (every position is still a key): (B, 1, d) out, as the last of (B, T, d)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if last_only:
            q, blocked, x = q[:, :, -1:], blocked[:, :, -1:], x[:, -1:]
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // self.heads))
        att = self.attn_drop(torch.softmax(att.masked_fill(blocked, float("-inf")), dim=-1))
        x = x + self.drop(self.proj((att @ v).transpose(1, 2).reshape(b, q.shape[2], d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SequenceEncoder(nn.Module):
    """Item embedding + positions + causal blocks -> a user state at every position.

    ``item_vectors`` (n, d_s) and ``content_vectors`` (n, c) are rows of items
    ``1..n``; ``user_vectors`` (U, d_s) rows of users ``0..U-1``. They are kept
    as frozen buffers only when their switch is on.
    """

    def __init__(self, n_items: int, params: AttentionParams, item_vectors: np.ndarray | None = None,
                 content_vectors: np.ndarray | None = None, user_vectors: np.ndarray | None = None):
        super().__init__()
        p, d = params, params.dim
        self.params, self.n_items = p, n_items
        with seeded(p.seed):  # held: a fit in another thread may be building its model
            self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=PAD)
            self.out_emb = None if p.tied else nn.Embedding(n_items + 1, d, padding_idx=PAD)
            self.pos_emb = nn.Embedding(p.max_len, d)
            self.emb_drop = Dropout(p.dropout)
            self.blocks = nn.ModuleList(Block(d, p.heads, p.ffn_dim or d, p.dropout) for _ in range(p.blocks))
            self.norm = nn.LayerNorm(d)
            self.bias = nn.Parameter(torch.zeros(n_items + 1)) if p.item_bias else None
            for name, weight in self.named_parameters():  # SASRec: Xavier-normal for every matrix
                if weight.dim() > 1:
                    nn.init.xavier_normal_(weight)
            self.feature_proj = self.content_proj = self.user_proj = None
            if p.item_features or p.item_init:
                if item_vectors is None:
                    raise ValueError("item_features / item_init need item_vectors")
            if p.item_features:
                self.register_buffer("item_features", self._rows(item_vectors))
                self.feature_proj = nn.Linear(item_vectors.shape[1], d, bias=False)
            if p.content:
                if content_vectors is None:
                    raise ValueError("content needs content_vectors")
                self.register_buffer("content_features", self._rows(content_vectors))
                self.content_proj = nn.Linear(content_vectors.shape[1], d, bias=False)
            if p.long_term:
                if user_vectors is None:
                    raise ValueError("long_term needs user_vectors")
                self.register_buffer("user_features", _standardised(user_vectors))
                self.user_proj = nn.Linear(user_vectors.shape[1], d, bias=False)
            if p.zero_proj:
                for proj in (self.feature_proj, self.content_proj, self.user_proj):
                    if proj is not None:
                        nn.init.zeros_(proj.weight)
            if p.item_init:
                self._init_items(item_vectors)
        self.reseed(p.seed)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()
            if self.out_emb is not None:
                self.out_emb.weight[PAD].zero_()

    def reseed(self, seed: int) -> None:
        """One numpy generator, seeded, for every dropout of the model."""
        rng = np.random.default_rng(seed)
        for m in self.modules():
            if isinstance(m, Dropout):
                m.rng = rng

    def _rows(self, vectors: np.ndarray) -> torch.Tensor:
        """Standardised (n + 1, k) features with the PAD row zero."""
        if len(vectors) != self.n_items:
            raise ValueError(f"expected {self.n_items} item rows, got {len(vectors)}")
        v = _standardised(vectors)
        return torch.cat([v.new_zeros(1, v.shape[1]), v])

    def _init_items(self, vectors: np.ndarray) -> None:
        """ID embedding := Doc2Vec vectors (fixed random projection if the sizes differ), at the init's scale."""
        v = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
        if v.shape[1] != self.params.dim:
            g = torch.Generator().manual_seed(self.params.seed)
            v = v @ torch.randn(v.shape[1], self.params.dim, generator=g) / math.sqrt(v.shape[1])
        with torch.no_grad():
            w = self.item_emb.weight
            w[1:] = v * (w[1:].std() / v.std().clamp(min=1e-8))

    # ---------------------------------------------------------------- items
    def item_side(self, items: torch.Tensor, output: bool = False) -> torch.Tensor:
        """Item representations (..., d): ID embedding (+ projected Doc2Vec features + content)."""
        emb = self.out_emb if output and self.out_emb is not None else self.item_emb
        x = emb(items)
        if self.feature_proj is not None:
            x = x + self.feature_proj(self.item_features[items])
        if self.content_proj is not None:
            x = x + self.content_proj(self.content_features[items])
        return x

    def output_items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, b): output vectors (n + 1, d) and biases (n + 1,) of every index, PAD included."""
        v = self.item_side(torch.arange(self.n_items + 1), output=True)
        b = self.bias if self.bias is not None else v.new_zeros(self.n_items + 1)
        return v, b

    # ---------------------------------------------------------------- users
    def forward(self, seq: torch.Tensor, users: torch.Tensor | None = None,
                user_vectors: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """States (B, T, d) of left-padded item rows ``seq`` (B, T <= max_len); with long_term, the projected
        paragraph vector of ``users`` (B,) (rows of ``user_vectors``) or of ``user_vectors`` (B, d_s), standardised
        as the stored ones, is added (without either: the states without it). ``last_only``: only the state
        after the last column, (B, 1, d), computed without the other positions' queries in the last block.

        Positions are counted from the right (the last column is position
        ``max_len - 1``), so trimming leading padding changes nothing.
        """
        b, t = seq.shape
        valid = seq != PAD
        pos = torch.arange(self.params.max_len - t, self.params.max_len)
        x = self.item_side(seq) * math.sqrt(self.params.dim) + self.pos_emb(pos)
        x = self.emb_drop(x) * valid[..., None]
        eye = torch.eye(t, dtype=torch.bool)
        blocked = ~(torch.ones(t, t, dtype=torch.bool).tril() & (valid[:, None, :] | eye))[:, None]  # (B,1,T,T)
        for n, block in enumerate(self.blocks):
            last = last_only and n == len(self.blocks) - 1
            x = block(x, blocked, last)
            x = x * valid[:, -x.shape[1]:, None]
        x = self.norm(x)
        if self.user_proj is not None and (users is not None or user_vectors is not None):
            vectors = self.user_features[users] if users is not None else user_vectors
            x = x + self.user_proj(vectors)[:, None, :]
        return x


# -------------------------------------------------------------------- data
def pad_left(histories: Sequence[np.ndarray], length: int) -> np.ndarray:
    """(B, length) int64 rows: the last ``length`` items of each history, left-padded with PAD."""
    out = np.zeros((len(histories), length), dtype=np.int64)
    for r, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-length:]
        if len(h):
            out[r, length - len(h):] = h
    return out


def training_rows(sequences: Sequence[np.ndarray], max_len: int, windows: int = 1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, owners): item t+1 is the target of the state after item t.

    Each history gives up to ``windows`` rows of ``max_len`` targets, newest
    first, that do not overlap: the first row holds its last ``max_len``
    targets, the next the ``max_len`` before them, and so on. ``owners`` (R,) is
    the index in ``sequences`` of each row's history.
    """
    ins, outs, owners = [], [], []
    for n, s in enumerate(sequences):
        s = np.asarray(s)
        for w in range(windows):
            end = len(s) - w * max_len  # targets s[start:end], inputs one item earlier
            if w and end < 2:
                break
            start = max(end - max_len, 1)
            ins.append(s[start - 1:end - 1])
            outs.append(s[start:end])
            owners.append(n)
    return pad_left(ins, max_len), pad_left(outs, max_len), np.asarray(owners, dtype=np.int64)


def batch_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                bucket: bool) -> list[np.ndarray]:
    """Row indexes of each batch of an epoch: shuffled, or by length (random ties) in shuffled batches."""
    perm = rng.permutation(len(lengths))
    if bucket:
        perm = perm[np.argsort(lengths[perm], kind="stable")]
    batches = [perm[s:s + batch_size] for s in range(0, len(perm), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if bucket else batches


# -------------------------------------------------------------------- loss
def _logits(h: torch.Tensor, v: torch.Tensor, bf16: bool) -> torch.Tensor:
    if bf16:
        return (h.bfloat16() @ v.bfloat16().T).float()
    return h @ v.T


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy of logits ``h @ v.T + b`` against ``targets``, computed in row chunks.

    The gradients are formed chunk by chunk in the forward pass, so the (N, n)
    logits never exist at once and stay in cache: the same numbers as autograd
    over the full matrix (up to rounding), with far less memory traffic.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, v: torch.Tensor, b: torch.Tensor, targets: torch.Tensor,
                chunk: int, bf16: bool, masked: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        n = len(h)
        grad_h, grad_v, grad_b = torch.empty_like(h), torch.zeros_like(v), torch.zeros_like(b)
        dtype = torch.bfloat16 if bf16 else h.dtype
        vl, hl = v.to(dtype), h.to(dtype)
        total = h.new_zeros(())
        for s in range(0, n, chunk):
            hc, tc = hl[s:s + chunk], targets[s:s + chunk]
            logits = (hc @ vl.T).to(h.dtype).add_(b)
            if masked is not None:
                lo, hi = torch.searchsorted(masked[0], torch.tensor([s, s + chunk])).tolist()
                logits[masked[0][lo:hi] - s, masked[1][lo:hi]] = float("-inf")
            rows = torch.arange(len(tc))
            top, picked = logits.amax(1, keepdim=True), logits[rows, tc]
            p = logits.sub_(top).exp_()  # one exp pass: the softmax is p / its row sums
            sums = p.sum(1, keepdim=True)
            total += (top.squeeze(1) + sums.squeeze(1).log() - picked).sum()
            p.div_(sums)
            p[rows, tc] -= 1.0
            grad_b += p.sum(0)
            p = p.to(dtype)
            grad_h[s:s + chunk] = p @ vl
            grad_v += (p.T @ hc).to(v.dtype)
        ctx.save_for_backward(grad_h, grad_v, grad_b)
        return total / max(n, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_h, grad_v, grad_b = ctx.saved_tensors
        scale = grad / max(len(grad_h), 1)
        return grad_h * scale, grad_v * scale, grad_b * scale, None, None, None, None


def full_loss(model: SequenceEncoder, h: torch.Tensor, targets: torch.Tensor, chunk: int = 256,
              masked: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean softmax cross-entropy of states ``h`` (N, d) over every item (PAD excluded), in row chunks.

    ``masked`` (rows, items), sorted by row: pairs left out of each row's softmax (never its target).
    """
    v, b = model.output_items()
    if masked is not None:
        masked = (masked[0], masked[1] - 1)
    return _ChunkedSoftmaxCE.apply(h, v[1:], b[1:], targets - 1, chunk, model.params.bf16, masked)


def seen_pairs(seq: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, items) sorted by row: for each real target of ``tgt`` (B, T), numbered in row-major order as
    ``h[tgt != PAD]`` is, the items of ``seq`` (B, T) its state has seen (columns up to its own), but the target."""
    real = tgt != PAD
    row_of = real.flatten().cumsum(0).view(real.shape) - 1
    upto = torch.ones(seq.shape[1], seq.shape[1], dtype=torch.bool).tril()
    b, t, s = (real[:, :, None] & (seq != PAD)[:, None, :] & upto).nonzero().unbind(1)
    items = seq[b, s]
    keep = items != tgt[b, t]
    return row_of[b, t][keep], items[keep]


def sampled_loss(model: SequenceEncoder, h: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                 log_q: torch.Tensor | None) -> torch.Tensor:
    """Mean sampled softmax: each target against ``negatives`` (K,) shared by the batch.

    ``log_q`` (n + 1,) is the log sampling probability of each index, subtracted
    from every logit (logQ correction); negatives equal to the target are masked.
    """
    v_pos = model.item_side(targets, output=True)
    v_neg = model.item_side(negatives, output=True)
    pos = (h * v_pos).sum(-1, keepdim=True)
    neg = _logits(h, v_neg, model.params.bf16)
    if model.bias is not None:
        pos, neg = pos + model.bias[targets][:, None], neg + model.bias[negatives][None, :]
    if log_q is not None:
        pos, neg = pos - log_q[targets][:, None], neg - log_q[negatives][None, :]
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(h), dtype=torch.long))


def sampling_distribution(sequences: Sequence[np.ndarray], n_items: int, how: str) -> torch.Tensor:
    """Probabilities (n + 1,) of drawing each index as a negative (PAD never)."""
    if how == "uniform":
        p = torch.ones(n_items + 1, dtype=torch.float64)
    elif how == "popularity":
        counts = np.bincount(np.concatenate([np.asarray(s) for s in sequences]), minlength=n_items + 1)
        p = torch.as_tensor(counts, dtype=torch.float64) ** 0.75 + 1e-3
    else:
        raise ValueError(f"unknown sampling {how!r}")
    p[PAD] = 0.0
    return p / p.sum()


# -------------------------------------------------------------------- train
EpochCallback = Callable[[int, float, float], None]  # (epoch, mean loss, seconds)


def epochs(model: SequenceEncoder, sequences: Sequence[np.ndarray], users: np.ndarray | None = None
           ) -> Iterator[tuple[int, float, float]]:
    """Train next-item at every position of each user's items (indexes 1..n), up to ``params.epochs`` epochs,
    yielding (epoch, mean loss, seconds) after each, with the model in eval mode (the caller may validate,
    keep the weights, or stop).

    ``users`` (U,) are the rows of ``user_vectors`` (needed with ``long_term``).
    """
    p = model.params
    model.reseed(p.seed + 1)
    rng = np.random.default_rng(p.seed)
    gen = torch.Generator().manual_seed(p.seed)
    inputs, targets, owners = training_rows(sequences, p.max_len, p.windows)
    lengths = (targets != PAD).sum(1)
    keep = lengths > 0
    inputs, targets, lengths = inputs[keep], targets[keep], lengths[keep]
    user_rows = None if users is None else np.asarray(users, dtype=np.int64)[owners[keep]]
    inputs_t, targets_t = torch.from_numpy(inputs), torch.from_numpy(targets)
    probs = sampling_distribution(sequences, model.n_items, p.sampling) if p.loss == "sampled" else None
    log_q = torch.log(probs.clamp(min=1e-30) * p.negatives).float() if probs is not None and p.logq else None
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, betas=(0.9, 0.98), weight_decay=p.weight_decay)
    steps = p.epochs * math.ceil(len(inputs) / p.batch_size)

    def lr_at(step: int) -> float:
        scale = min(1.0, (step + 1) / p.warmup) if p.warmup else 1.0
        if p.schedule == "cosine":
            scale *= 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        return p.lr * scale

    step = 0
    for epoch in range(p.epochs):
        model.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for rows in batch_order(lengths, p.batch_size, rng, p.bucket):
            t = int(lengths[rows].max())
            seq, tgt = inputs_t[rows, -t:], targets_t[rows, -t:]
            u = None if user_rows is None else torch.from_numpy(user_rows[rows])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p.bf16):
                h = model(seq, u).float()
            masked = seen_pairs(seq, tgt) if p.mask_seen and p.loss == "full" else None
            real = tgt != PAD
            h, tgt = h[real], tgt[real]
            if p.loss == "full":
                loss = full_loss(model, h, tgt, masked=masked)
            elif p.loss == "sampled":
                negs = torch.multinomial(probs, p.negatives, replacement=True, generator=gen)
                loss = sampled_loss(model, h, tgt, negs, log_q)
            else:
                raise ValueError(f"unknown loss {p.loss!r}")
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += loss.item() * len(tgt)
            count += len(tgt)
        model.eval()
        yield epoch + 1, total / max(count, 1), time.perf_counter() - start


def fit(model: SequenceEncoder, sequences: Sequence[np.ndarray], users: np.ndarray | None = None,
        on_epoch: EpochCallback | None = None) -> list[float]:
    """Train ``params.epochs`` epochs (``epochs``); returns the mean training loss of each epoch."""
    history = []
    for epoch, loss, seconds in epochs(model, sequences, users):
        history.append(loss)
        if on_epoch is not None:
            on_epoch(epoch, loss, seconds)
    return history


# ------------------------------------------------------------------ scoring
@torch.no_grad()
def last_states(model: SequenceEncoder, rows: torch.Tensor, users: torch.Tensor | None = None,
                batch: int = 256) -> torch.Tensor:
    """(B, d) state after the last column of left-padded rows ``rows`` (B, T), in eval mode.

    Rows go through the encoder sorted by length, ``batch`` at a time, each
    batch trimmed to its longest history and only the last position queried
    in the last block: the same states, without the padding's work.
    """
    was = model.training
    model.eval()
    lengths = (rows != PAD).sum(1)
    order = torch.argsort(lengths, stable=True)
    out = rows.new_zeros((len(rows), model.params.dim), dtype=torch.float32)
    for s in range(0, len(rows), batch):
        pick = order[s:s + batch]
        width = max(int(lengths[pick].max()), 1)
        u = None if users is None else users[pick]
        out[pick] = model(rows[pick, rows.shape[1] - width:], u, last_only=True)[:, -1].float()
    model.train(was)
    return out


def final_states(model: SequenceEncoder, histories: Sequence[np.ndarray], users: np.ndarray | None = None,
                 batch: int = 256) -> torch.Tensor:
    """(B, d) state after the last item of each history (item indexes 1..n), in eval mode."""
    rows = torch.from_numpy(pad_left(histories, model.params.max_len))
    u = None if users is None else torch.as_tensor(np.asarray(users), dtype=torch.long)
    return last_states(model, rows, u, batch)


@torch.no_grad()
def item_matrix(model: SequenceEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, b): output vectors (n, d) and biases (n,) of items 1..n (row r = item r + 1)."""
    v, b = model.output_items()
    return v[1:].detach().clone(), b[1:].detach().clone()


def scores(model: SequenceEncoder, histories: Sequence[np.ndarray], users: np.ndarray | None = None
           ) -> torch.Tensor:
    """(B, n) scores of items 1..n after each history: one matrix multiply."""
    v, b = item_matrix(model)
    return final_states(model, histories, users) @ v.T + b
