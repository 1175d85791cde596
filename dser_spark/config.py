"""Typed configuration: one YAML file maps onto nested dataclasses.

Every key has a default; unknown keys and bad values raise ``ConfigError``
naming the dotted key. ``--set section.key=value`` overrides apply on top.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


@dataclass
class SparkConfig:
    """Spark session settings; spark-submit's own --master/--conf win."""

    master: str = "local[*]"
    app_name: str = "dser-spark"
    log_level: str = "WARN"
    conf: dict[str, str] = field(
        default_factory=lambda: {
            "spark.sql.shuffle.partitions": "8",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "4g",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        }
    )


@dataclass
class DataConfig:
    """Where the raw MovieLens files are and how to read them."""

    format: Literal["auto", "recbole", "ml-100k", "ml-1m", "ml-latest", "kaggle"] = "recbole"
    path: str = "builtin:ml-100k"
    max_reject_fraction: float = 0.01


@dataclass
class WarehouseConfig:
    """Where tables live and the catalog database that names them."""

    root: str = "./warehouse"
    database: str = "dser"
    catalog: Literal["hive", "in-memory"] = "hive"
    metastore: str = ""  # Derby metastore directory; default <root>/metastore_db


@dataclass
class ImplicitConfig:
    """Which ratings count as positive feedback (0 = all, as in NCF)."""

    min_rating: float = 0.0


@dataclass
class SplitConfig:
    """Leave-latest-out split and evaluation candidates."""

    validation: bool = True
    min_interactions: int = 2
    eval_negatives: int = 99


@dataclass
class EmbedConfig:
    """gensim Doc2Vec settings for user sequences and item content."""

    vector_size: int = 64
    window: int = 5
    epochs: int = 20
    min_count: int = 1
    negative: int = 5
    dm: int = 0  # 0 = PV-DBOW (with trained word vectors), 1 = PV-DM
    content_vector_size: int = 32
    content_epochs: int = 20
    workers: int = 1  # gensim threads; 1 is deterministic (required for reproducible runs)


@dataclass
class RecentConfig:
    """Short-term taste: the user's last k items (the main window), plus extra windows.

    The model's recent windows are ``[k] + windows``: each is the mean Doc2Vec
    item vector of the user's last k_w items with a learned weight (k's starts
    at ``model.recency_init``, the others at 0).
    """

    k: int = 3
    windows: list[int] = field(default_factory=lambda: [1, 5, 10, 20])


@dataclass
class ModelConfig:
    """The DSER network; switching parts off gives the baselines."""

    gmf_dim: int = 32
    mlp_layers: list[int] = field(default_factory=lambda: [64, 32, 16])
    use_gmf: bool = True
    use_mlp: bool = True
    use_recency: bool = True
    recency_init: float = 1.0
    use_long_term: bool = True   # learned weight × paragraph vector · output vector (starts at 0)
    item_bias: bool = True       # learned per-item bias (starts at 0)


@dataclass
class TrainConfig:
    """Training loop settings; negatives are drawn fresh per epoch."""

    epochs: int = 5              # maximum epochs of the selection fit (early stopping picks the best)
    negatives: int = 4
    # uniform: every never-touched item alike; popularity: in proportion to (training count + 1) ** popularity_power
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    popularity_power: float = 0.75
    batch_size: int = 1024
    lr: float = 0.002
    weight_decay: float = 0.0
    epoch: int = 0  # which epoch's train_samples the sequences stage writes
    show_progress: bool = True
    loss: Literal["bce", "bpr", "softmax"] = "bce"  # bpr / softmax: each positive against its own negatives
    # next: each positive is scored with the recent windows of the history before it (next-item);
    # static: every positive uses the user's final windows (as at serving time)
    objective: Literal["next", "static"] = "next"
    patience: int = 2            # epochs without validation HR@k gain before stopping (0 = never stop early)
    select_epochs: bool = True   # fit on train, pick the epoch on validation, refit on train+validation
    # NCF-style: fit GMF and MLP alone first and start the fused model from both (output unit
    # [alpha * GMF's, (1 - alpha) * MLP's]); applies to models with both parts
    pretrain: bool = False
    pretrain_alpha: float = 0.5
    checkpoint_dir: str = ""     # local directory for resumable checkpoints ("" = system temp dir)
    threads: int = 0             # torch intra-op threads (0 = torch's default; 1 is robust on a busy machine)


@dataclass
class EvaluateConfig:
    """Metric cut-offs, protocols and baselines."""

    k: int = 10
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    full_ranking: bool = True
    coverage_k: int = 10
    # ItemPop, Recency (untrained), ALS (Spark MLlib implicit), GMF, MLP, NeuMF
    baselines: list[str] = field(default_factory=lambda: ["ItemPop", "Recency", "ALS"])
    als_ranks: list[int] = field(default_factory=lambda: [64])
    als_regs: list[float] = field(default_factory=lambda: [0.1])
    als_alpha: float = 1.0
    als_iter: int = 10
    baseline_epochs: int = 20    # maximum epochs of the GMF / MLP / NeuMF selection fits (early stopping)
    report: bool = True


@dataclass
class RecommendConfig:
    """Top-K serving: who, over which items, and how the scoring is blocked."""

    k: int = 10
    users: str = "all"            # all users in interactions, a warehouse table name, or a Parquet path/URI
    user_ids: list[int] = field(default_factory=list)  # or an explicit list (wins over users)
    items: str = "all"            # candidate items: all the model knows, a table name, or a Parquet path/URI
    item_ids: list[int] = field(default_factory=list)  # or an explicit list (wins over items)
    exclude_seen: bool = True     # false keeps re-watchable items the user already interacted with
    scoring: Literal["full", "dot"] = "full"  # dot: only the GMF + taste dot products (no MLP tower)
    user_block: int = 256         # users scored together
    item_block: int = 0           # items per logits block; 0 = as many as fit block_memory_mb
    block_memory_mb: int = 64     # memory for one user_block x item_block block of logits
    tower_pairs: int = 0          # (user, item) pairs per MLP-tower chunk; 0 = from the CPU's L2 cache size
    partitions: int = 0           # user partitions (Spark tasks); 0 = default parallelism (one per core)


@dataclass
class PublishConfig:
    """Publishing of the nightly recommendations."""

    retain: int = 7
    refit_all: bool = True


@dataclass
class Config:
    """The whole configuration of a run."""

    seed: int = 42
    spark: SparkConfig = field(default_factory=SparkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    warehouse: WarehouseConfig = field(default_factory=WarehouseConfig)
    implicit: ImplicitConfig = field(default_factory=ImplicitConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    recent: RecentConfig = field(default_factory=RecentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (round-trips through ``from_dict``)."""
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value to the annotated type, naming the key on error."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key '{where}' (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name in known & set(data):
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] or {}, key)
        elif get_origin(tp) is dict:
            merged = dict(getattr(cls(), name))
            merged.update(_coerce(data[name] or {}, tp, key))
            kwargs[name] = merged
        else:
            kwargs[name] = _coerce(data[name], tp, key)
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


_POSITIVE = {
    "split.eval_negatives", "embed.vector_size", "embed.window", "embed.epochs",
    "embed.min_count", "embed.content_vector_size", "embed.content_epochs", "recent.k",
    "model.gmf_dim", "train.batch_size", "evaluate.k", "recommend.k", "recommend.user_block",
    "publish.retain", "embed.workers", "evaluate.coverage_k", "evaluate.als_iter", "evaluate.baseline_epochs",
    "recommend.block_memory_mb",
}
_NON_NEGATIVE = {"split.min_interactions", "train.epochs", "train.negatives", "train.epoch", "train.patience",
                 "train.threads",
                 "evaluate.als_alpha", "recommend.item_block", "recommend.tower_pairs", "recommend.partitions",
                 "embed.negative", "implicit.min_rating", "seed", "train.weight_decay", "train.popularity_power"}


def _validate(obj: Any, prefix: str) -> None:
    """Range checks for numeric keys of one section."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if key in _POSITIVE and value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value!r}")
        if key in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value!r}")
    if prefix == "data" and not 0.0 <= obj.max_reject_fraction <= 1.0:
        raise ConfigError(f"data.max_reject_fraction: must be in [0, 1], got {obj.max_reject_fraction!r}")
    if prefix == "train" and obj.lr <= 0:
        raise ConfigError(f"train.lr: must be > 0, got {obj.lr!r}")
    if prefix == "train" and not 0.0 <= obj.pretrain_alpha <= 1.0:
        raise ConfigError(f"train.pretrain_alpha: must be in [0, 1], got {obj.pretrain_alpha!r}")
    if prefix == "recent" and any(k <= 0 for k in obj.windows):
        raise ConfigError(f"recent.windows: must be positive sizes, got {obj.windows!r}")
    if prefix == "evaluate":
        known = {"ItemPop", "Recency", "ALS", "GMF", "MLP", "NeuMF"}
        bad = [b for b in obj.baselines if b not in known]
        if bad:
            raise ConfigError(f"evaluate.baselines: unknown {bad} (known: {', '.join(sorted(known))})")
        if not obj.ks or any(k <= 0 for k in obj.ks):
            raise ConfigError(f"evaluate.ks: must be a non-empty list of positive cut-offs, got {obj.ks!r}")
        if not obj.als_ranks or any(r <= 0 for r in obj.als_ranks) or not obj.als_regs \
                or any(r < 0 for r in obj.als_regs):
            raise ConfigError("evaluate.als_ranks / als_regs: need positive ranks and non-negative regs")
    if prefix == "recommend":
        for key in ("users", "items"):
            if not getattr(obj, key).strip():
                raise ConfigError(f"recommend.{key}: must be 'all', a table name or a Parquet path, got ''")
    if prefix == "model":
        if not obj.mlp_layers or any(n <= 0 for n in obj.mlp_layers):
            raise ConfigError(f"model.mlp_layers: must be a non-empty list of positive sizes, got {obj.mlp_layers!r}")
        if not (obj.use_gmf or obj.use_mlp or obj.use_recency):
            raise ConfigError("model: at least one of use_gmf, use_mlp, use_recency must be true")


def from_dict(data: dict[str, Any]) -> Config:
    """Build a validated ``Config`` from a nested mapping."""
    return _build(Config, data or {}, "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` (value in YAML syntax) into a key path and value."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"--set: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return ``data`` with each ``key=value`` override merged in."""
    merged = yaml.safe_load(yaml.safe_dump(data)) or {}
    for text in overrides:
        path, value = parse_override(text)
        if path[:2] == ["spark", "conf"] and len(path) > 2:
            # Spark keys contain dots themselves: spark.conf.spark.x.y=v
            path = ["spark", "conf", ".".join(path[2:])]
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(path)}: '{part}' is not a section")
        node[path[-1]] = value
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML ``path`` (or only defaults when None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    return from_dict(apply_overrides(data, overrides or []))
