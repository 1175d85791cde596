"""The DSER architecture of a stored model, drawn from its own config and weights (Graphviz DOT + text).

Sizes come from the tensor shapes in the serving fit's ``model.safetensors``
header (read without torch: an 8-byte length, then JSON), the switches
(``use_gmf``, ``use_mlp``, ...) from the model's manifest config, and the
learned taste weights from the few bytes that hold them. A model without a
readable fit is drawn from its config alone.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


@dataclass(frozen=True)
class Architecture:
    """What the diagram shows: the parts switched on and their real sizes."""

    model_id: str
    users: int | None
    items: int | None
    vector_size: int
    content_size: int
    gmf_dim: int
    mlp_layers: tuple[int, ...]
    use_gmf: bool
    use_mlp: bool
    use_recency: bool
    use_long_term: bool
    item_bias: bool
    windows: tuple[int, ...]
    recency_weights: tuple[float, ...] | None
    long_term_weight: float | None
    attention: dict | None = None  # ``model.attention`` of a ``model.encoder: attention`` model

    @property
    def fusion_inputs(self) -> int:
        return (self.gmf_dim if self.use_gmf else 0) + (self.mlp_layers[-1] if self.use_mlp else 0)


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header (name -> dtype, shape, offsets) and where its data starts."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def small_tensor(path: Path, header: dict, start: int, name: str, limit: int = 256) -> np.ndarray | None:
    """The values of a small tensor of the file (None if absent, too large or of another dtype)."""
    meta = header.get(name)
    if meta is None or meta["dtype"] not in DTYPES or int(np.prod(meta["shape"])) > limit:
        return None
    lo, hi = meta["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + lo)
        return np.frombuffer(f.read(hi - lo), dtype=DTYPES[meta["dtype"]]).reshape(meta["shape"])


def architecture(directory: Path, manifest: dict) -> Architecture | None:
    """The architecture of the model stored in ``directory`` (None when its manifest has no config)."""
    cfg = manifest.get("config") or {}
    model, embed, recent = cfg.get("model"), cfg.get("embed", {}), cfg.get("recent", {})
    if not model:
        return None
    windows = tuple(dict.fromkeys([recent.get("k", 3), *recent.get("windows", [])]))
    shapes, weights, long_term = {}, None, None
    fit = next((directory / s / "model.safetensors" for s in ("serve", "eval")
                if (directory / s / "model.safetensors").is_file()), None)
    if fit is not None:
        header, start = read_header(fit)
        shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
        found = small_tensor(fit, header, start, "windows")
        windows = tuple(int(w) for w in found) if found is not None else windows
        found = small_tensor(fit, header, start, "recency_weights")
        weights = tuple(float(w) for w in found) if found is not None else None
        found = small_tensor(fit, header, start, "long_term_weight")
        long_term = float(found) if found is not None else None
    tower = sorted((int(k.split(".")[1]), v[0]) for k, v in shapes.items()
                   if k.startswith("tower.") and k.endswith(".weight"))
    layers = ([shapes["mlp_user.weight"][0]] + [out for _, out in tower]) if "mlp_user.weight" in shapes \
        else list(model.get("mlp_layers", []))
    return Architecture(
        model_id=manifest.get("model_id", directory.name),
        users=shapes.get("user_vectors", [None])[0], items=shapes.get("item_vectors", [None])[0],
        vector_size=shapes.get("user_vectors", [0, embed.get("vector_size", 0)])[1],
        content_size=shapes.get("content_vectors", [0, embed.get("content_vector_size", 0)])[1],
        gmf_dim=shapes.get("user_emb.weight", [0, model.get("gmf_dim", 0)])[1], mlp_layers=tuple(layers),
        use_gmf=model.get("use_gmf", True), use_mlp=model.get("use_mlp", True),
        use_recency=model.get("use_recency", True), use_long_term=model.get("use_long_term", True),
        item_bias=model.get("item_bias", True), windows=windows, recency_weights=weights,
        long_term_weight=long_term, attention=model.get("attention") if model.get("encoder") == "attention" else None)


def _n(count: int | None) -> str:
    return f"{count:,} x " if count else ""


def _dser_inputs(at: dict) -> list[str]:
    """The Doc2Vec inputs an attention model carries."""
    return [text for key, text in (("item_init", "Doc2Vec item vectors as the ID embedding's start"),
                                   ("item_features", "projected Doc2Vec item vectors"),
                                   ("content", "projected content vectors"),
                                   ("long_term", "the projected paragraph vector in the user state"))
            if at.get(key)]


def _describe_attention(a: Architecture) -> list[str]:
    at = a.attention
    inputs = _dser_inputs(at)
    return [f"Attention encoder: the user's last {at['max_len']} items, item embeddings {_n(a.items)}{at['dim']} + "
            f"learned positions, {at['blocks']} pre-norm causal self-attention blocks ({at['heads']} head(s))",
            "DSER inputs: " + ("; ".join(inputs) if inputs else "none (SASRec)"),
            f"Score: user state ({at['dim']}) . item vector ({at['dim']}) + item bias"]


def describe(a: Architecture) -> list[str]:
    """The architecture as text lines (the diagram's accessible equivalent)."""
    if a.attention is not None:
        return _describe_attention(a)
    d, c, layers = a.vector_size, a.content_size, a.mlp_layers
    lines = [f"Doc2Vec inputs (frozen): user paragraph vectors {_n(a.users)}{d}, item sequence vectors and "
             f"output vectors {_n(a.items)}{d}, item content vectors {_n(a.items)}{c}"]
    if a.use_gmf:
        lines.append(f"GMF: user and item ID embeddings of {a.gmf_dim}, element-wise product ({a.gmf_dim})")
    if a.use_mlp:
        tower = " -> ".join(str(s) for s in layers)
        lines.append(f"MLP: user vector {d} -> {layers[0]} + item vectors {d} + {c} -> {layers[0]}, "
                     f"ReLU tower {tower}")
    if a.use_recency:
        weights = a.recency_weights or [None] * len(a.windows)
        taste = ", ".join(f"last {w}" + ("" if wt is None else f" x {wt:+.3f}") for w, wt in zip(a.windows, weights))
        text = f"Taste: mean item vectors of the recent windows ({taste})"
        if a.use_long_term:
            text += " + the paragraph vector" + ("" if a.long_term_weight is None else f" x {a.long_term_weight:+.3f}")
        lines.append(text + f", dotted with the item output vector ({d})" + (" + item bias" if a.item_bias else ""))
    lines.append(f"Fusion: linear {a.fusion_inputs} -> 1, plus the taste term: score(user, item)")
    return lines


def _dot_attention(a: Architecture) -> str:
    at, d = a.attention, a.attention["dim"]
    out = ['digraph DSER {', 'rankdir=LR; bgcolor="transparent";',
           'node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=11];',
           'edge [color="#5b6b80"];',
           f'last [label="last {at["max_len"]} items\nof the user"];',
           f'items [label="item embedding {_n(a.items)}{d}\n+ positions"];',
           f'blocks [label="{at["blocks"]} causal self-attention\nblocks, {at["heads"]} head(s)"];',
           f'state [label="user state {d}"];',
           f'ivec [label="item vector {d}\n+ item bias"];',
           'score [label="score(user, item)\ndot product", shape=oval, fillcolor="#dff3e3"];',
           'last -> items -> blocks -> state -> score; items -> ivec -> score;']
    inputs = _dser_inputs(at)
    if inputs:
        out += ['d2v [label="Doc2Vec (frozen)\n' + "\n".join(inputs) + '", style="rounded,dashed"];',
                'd2v -> items;' + (' d2v -> state;' if at.get("long_term") else '')]
    return "\n".join(out + ["}"])


def dot(a: Architecture) -> str:
    """A Graphviz DOT drawing of the architecture."""
    if a.attention is not None:
        return _dot_attention(a)
    d, c, layers = a.vector_size, a.content_size, a.mlp_layers
    out = ['digraph DSER {', 'rankdir=LR; bgcolor="transparent";',
           'node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=11];',
           'edge [color="#5b6b80"];',
           'subgraph cluster_doc2vec { label="Doc2Vec (frozen)"; style="rounded,dashed"; color="#8899aa";',
           f'  uvec [label="user paragraph vector\\n{_n(a.users)}{d}"];',
           f'  ivec [label="item sequence vector\\n{_n(a.items)}{d}"];',
           f'  cvec [label="item content vector\\n{_n(a.items)}{c}"];',
           f'  ovec [label="item output vector\\n{_n(a.items)}{d}"]; }}',
           f'fusion [label="fusion\\nlinear {a.fusion_inputs} -> 1", fillcolor="#fdf1d6"];',
           'score [label="score(user, item)", shape=oval, fillcolor="#dff3e3"];', 'fusion -> score;']
    if a.use_gmf:
        out += ['subgraph cluster_gmf { label="GMF"; style=rounded; color="#8899aa";',
                f'  uemb [label="user ID embedding\\n{_n(a.users)}{a.gmf_dim}"];',
                f'  iemb [label="item ID embedding\\n{_n(a.items)}{a.gmf_dim}"];',
                f'  prod [label="element-wise product\\n{a.gmf_dim}"]; }}',
                'uemb -> prod; iemb -> prod; prod -> fusion;']
    if a.use_mlp:
        tower = [f'  l0 [label="user {d} -> {layers[0]}\\n+ item {d}+{c} -> {layers[0]}\\nReLU"];']
        tower += [f'  l{i} [label="linear {layers[i - 1]} -> {layers[i]}\\nReLU"];' for i in range(1, len(layers))]
        out += ['subgraph cluster_mlp { label="MLP"; style=rounded; color="#8899aa";', *tower, '}',
                'uvec -> l0; ivec -> l0; cvec -> l0;',
                *[f'l{i - 1} -> l{i};' for i in range(1, len(layers))], f'l{len(layers) - 1} -> fusion;']
    if a.use_recency:
        weights = a.recency_weights or [None] * len(a.windows)
        terms = "\\n".join(f"last {w}" + ("" if wt is None else f" x {wt:+.2f}")
                            for w, wt in zip(a.windows, weights))
        out += [f'recent [label="recent windows\\n{terms}"];', 'ivec -> recent;',
                'taste [label="taste . item output vector' + ("\\n+ item bias" if a.item_bias else "") + '"];',
                'recent -> taste; ovec -> taste; taste -> score;']
        if a.use_long_term:
            weight = f" x {a.long_term_weight:+.2f}" if a.long_term_weight is not None else ""
            out += [f'long [label="long-term{weight}"];', 'uvec -> long; long -> taste;']
    return "\n".join(out + ["}"])
