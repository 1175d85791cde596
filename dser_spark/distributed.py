"""Distributed training (``train.distributed``): each fit as TorchDistributor processes, data-parallel.

The driver collects no training data: it starts ``train.processes`` processes
and loads what rank 0 wrote. Each process

- reads the ``sequences`` table's item lists with pyarrow and keeps its shard
  of users (``user_id % processes == rank``), cut to the fit's scope; the user
  ids of every shard are gathered, so the dense user index is the driver
  path's;
- reads the Doc2Vec inputs (``user_vectors``, ``item_seq_vectors``,
  ``item_content_vectors``) whole from Parquet: they are buffers of the
  replicated model. A user's recent-window vectors are computed by the process
  holding that user's history and summed over the processes (the others
  contribute zeros); the item universe is the one small array the driver
  passes;
- runs ``train.fit`` on its shard (a ``train.Replica``): a user's negatives
  are seeded by (seed, epoch, user), so they are the driver path's whatever the
  number of processes; each step is one global batch of ``train.batch_size``
  positives split over the processes, and DDP averages the gradients (the
  sparse ones of ``train.sparse_ids`` are gathered and averaged by hand);
- validates on rank 0 only (the ``eval_candidates`` table) and broadcasts the
  metric, so every process takes the same early-stopping decision after the
  same epoch and keeps the same best weights.

Rank 0 writes the fit as model artifacts (safetensors, history json; no
pickle) to a staging directory under the warehouse root; the driver loads and
deletes it. A distributed fit is not checkpointed (a killed one starts over).
Under a ``local`` / ``local[n]`` master the processes run on the driver's
machine (TorchDistributor's local mode); under any other (``local-cluster``,
standalone, YARN, Kubernetes) as barrier tasks on the executors.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import torch
import torch.distributed as dist
from pyspark.sql import SparkSession
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dser_spark import sequences, tables
from dser_spark.artifacts import Trained, load_artifacts, save_artifacts
from dser_spark.config import Config, ModelConfig, from_dict
from dser_spark.logs import setup_logging
from dser_spark.model import Inputs
from dser_spark.sequences import VALIDATION
from dser_spark.train import FitData, Replica, Validator
from dser_spark.train import fit as fit_replica

log = logging.getLogger("dser_spark")

SEQUENCE_COLUMNS = ["user_id", "item_ids", "has_validation", "has_test"]
READS = ("interactions", "sequences", "user_vectors", "item_seq_vectors", "item_content_vectors")


# ------------------------------------------------------------------ driver
def is_local_master(master: str) -> bool:
    """``local`` / ``local[n]``: TorchDistributor's local mode (``local-cluster`` has executors)."""
    return master == "local" or master.startswith("local[")


def torch_threads(cores: int, processes: int, cap: int = 0) -> int:
    """Intra-op threads of one of ``processes`` sharing ``cores``: never more than its share, at most
    ``cap`` when set."""
    share = max(1, cores // processes)
    return min(share, cap) if cap else share


def fit(cfg: Config, model_cfg: ModelConfig, scope: str, label: str, validated: bool,
        epochs: int | None = None) -> Trained:
    """One fit of ``scope`` by ``cfg.train.processes`` TorchDistributor processes (the active session's).

    ``validated``: early stopping on validation HR@``train.validation_k``;
    ``epochs`` overrides ``train.epochs``. Returns the fit as ``train.fit`` does.
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    spark = SparkSession.active()
    local = is_local_master(spark.sparkContext.master)
    cores = len(os.sched_getaffinity(0)) if local else int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))
    settings = cfg.to_dict()
    settings["warehouse"]["root"] = tables.root_uri(cfg)  # absolute: the processes may run elsewhere
    staging = tables.staging_uri(cfg, "train")
    spec = {"config": settings, "model": dataclasses.asdict(model_cfg), "scope": scope, "label": label,
            "validated": validated, "epochs": epochs, "cores": cores, "staging": staging,
            "universe": sequences.item_universe(tables.read_table(spark, cfg, "interactions"))}
    record = tables.ACTIVITY.get()
    if record is not None:  # what the processes read, in the stage's run record
        for name in READS + (("eval_candidates",) if validated else ()):
            record.note_read(name)
    log.info("%s: %d processes (%s)", label, cfg.train.processes,
             "on this machine" if local else "barrier tasks on the executors")
    fs = tables.filesystem(spark, cfg)
    try:
        TorchDistributor(num_processes=cfg.train.processes, local_mode=local,
                         use_gpu=cfg.train.use_gpu).run(run_process, spec)
        if not fs.exists(staging):  # torchrun's wrapper does not always pass a failed process's exit code on
            raise RuntimeError(f"{label}: distributed training failed, rank 0 wrote no model (its error is in "
                               "the processes' output above)")
        with tempfile.TemporaryDirectory() as tmp:
            local_copy = tables.get_directory(spark, cfg, staging.removeprefix(tables.root_uri(cfg) + "/"),
                                              str(Path(tmp) / "fit"))
            return load_artifacts(Path(local_copy))
    finally:
        fs.delete(staging)


# ---------------------------------------------------------------- processes
def run_process(spec: dict) -> None:
    """One training process (TorchDistributor runs it under torchrun): its shard of the fit, DDP."""
    cfg, model_cfg = from_dict(spec["config"]), ModelConfig(**spec["model"])
    gpu = cfg.train.use_gpu
    dist.init_process_group("nccl" if gpu else "gloo")
    try:
        rank = dist.get_rank()
        setup_logging(logging.INFO if rank == 0 else logging.WARNING)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if gpu else torch.device("cpu")
        if gpu:
            torch.cuda.set_device(device)
        threads = torch_threads(spec["cores"], int(os.environ.get("LOCAL_WORLD_SIZE", 1)), cfg.train.threads)
        started = time.time()
        data = shard_data(cfg, spec["scope"], spec["universe"], device)
        counts = np.concatenate(all_gather(np.array([len(data.flat_items)]), device))
        log.info("%s: %d users, positives per process %s, read in %.1fs; %d torch threads each", spec["label"],
                 len(data.user_ids), counts.tolist(), time.time() - started, threads)
        if counts.min() * cfg.train.batch_size < counts.sum():
            raise ValueError(f"train.processes={len(counts)}: a process holds only {counts.min()} of "
                             f"{counts.sum()} positives, too few for batches of {cfg.train.batch_size}")
        replica = Replica(
            total_positives=int(counts.sum()), device=device,
            all_sum=lambda t: all_sum(t, device),
            average_sparse=lambda params: average_sparse(params, device),
            wrap=lambda m: data_parallel(m, device if gpu else None))
        validate = lead_validator(cfg, data, device) if spec["validated"] else None
        trained = fit_replica(data, model_cfg, dataclasses.replace(cfg.train, threads=threads), cfg.seed,
                              spec["label"], validate, spec["epochs"], None, replica)
        if rank == 0:
            trained.model.cpu()
            write_artifacts(trained, cfg, spec["staging"])
    finally:
        dist.destroy_process_group()


def data_parallel(module: nn.Module, gpu: torch.device | None) -> DistributedDataParallel:
    """``module`` under DDP, which averages the dense gradients; it ignores the sparse embeddings
    (``average_sparse`` averages theirs: gloo's sparse all-reduce corrupted the heap at 25M ratings)."""
    sparse = [f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.Embedding) and m.sparse]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, sparse)
    return DistributedDataParallel(module, device_ids=[gpu] if gpu is not None else None,
                                   broadcast_buffers=False, static_graph=True)


def average_sparse(params: list[nn.Parameter], device: torch.device) -> None:
    """Each parameter's sparse gradient replaced by its average over the processes (DDP's mean): every
    process's rows gathered as dense tensors, the duplicates summed by ``SparseAdam``'s coalesce."""
    world = dist.get_world_size()
    for param in params:
        grad = param.grad.coalesce()
        sizes = gather_sizes(grad.values(), device)  # one exchange of lengths for the rows and their values
        rows = torch.cat(gather_rows(grad.indices()[0], sizes, device))
        values = torch.cat(gather_rows(grad.values(), sizes, device)) / world
        param.grad = torch.sparse_coo_tensor(rows[None], values, param.shape, check_invariants=False)


def all_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` summed element-wise over the processes."""
    out = t.to(device).clone()
    dist.all_reduce(out)
    return out.cpu()


def all_gather(values: np.ndarray, device: torch.device) -> list[np.ndarray]:
    """Every process's 1-D int64 ``values`` (lengths may differ), in rank order."""
    mine = torch.from_numpy(np.asarray(values, dtype=np.int64))
    return [rows.cpu().numpy() for rows in gather_rows(mine, gather_sizes(mine, device), device)]


def gather_sizes(t: torch.Tensor, device: torch.device) -> list[int]:
    """Every process's ``len(t)``, in rank order."""
    size = torch.tensor([len(t)], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def gather_rows(t: torch.Tensor, sizes: list[int], device: torch.device) -> list[torch.Tensor]:
    """Every process's ``t`` (of ``sizes[rank]`` rows: ``gather_sizes``), in rank order, on ``device``."""
    padded = t.new_zeros((max(sizes), *t.shape[1:]), device=device)
    padded[:len(t)] = t
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return [o[:n] for o, n in zip(out, sizes)]


def shard_data(cfg: Config, scope: str, universe: np.ndarray, device: torch.device) -> FitData:
    """This process's ``FitData``: every user of the fit, positives only for its shard of users."""
    mine, seqs = read_shard(cfg, scope, dist.get_rank(), dist.get_world_size())
    user_ids = np.sort(np.concatenate(all_gather(mine, device)))  # the shards are disjoint
    user_pos = [np.empty(0, dtype=np.int64)] * len(user_ids)
    for row, items in zip(np.searchsorted(user_ids, mine), seqs):
        user_pos[row] = items
    inputs = Inputs(
        user_vectors=read_vectors(cfg, "user_vectors", "user_id", user_ids, scope),
        recent_vectors=None,
        item_vectors=read_vectors(cfg, "item_seq_vectors", "item_id", universe, scope),
        item_out_vectors=read_vectors(cfg, "item_seq_vectors", "item_id", universe, scope, "out_vector"),
        content_vectors=read_vectors(cfg, "item_content_vectors", "item_id", universe, None),
    )
    data = FitData(user_ids, universe, user_pos, inputs, cfg.recent.window_sizes())
    if data.inputs.recent_vectors is not None:  # zeros for the other shards' users: the sum is every user's
        data.inputs = dataclasses.replace(data.inputs,
                                          recent_vectors=all_sum(data.inputs.recent_vectors, device))
    return data


def lead_validator(cfg: Config, data: FitData, device: torch.device) -> Validator:
    """Validation HR@k computed by rank 0 and broadcast: every process gets the same value."""
    check = None
    if dist.get_rank() == 0:
        from dser_spark.selection import validator  # selection imports this module

        table = dataset(cfg, "eval_candidates").to_table(filter=pc.field("split") == VALIDATION)
        cands = table.to_pandas().sort_values("user_id").reset_index(drop=True)
        check = validator(data, cands, cfg.train)

    def validate(model) -> float:
        value = torch.zeros(1, dtype=torch.float64, device=device)
        if check is not None:
            value[0] = check(model if device.type == "cpu" else copy.deepcopy(model).cpu())
        dist.broadcast(value, 0)
        return float(value.item())

    return validate


# ------------------------------------------------------------------ tables
def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a warehouse URI (``s3a://`` read as ``s3://``)."""
    return pafs.FileSystem.from_uri("s3://" + uri[len("s3a://"):] if uri.startswith("s3a://") else uri)


def dataset(cfg: Config, name: str) -> ds.Dataset:
    """Table ``name`` as a pyarrow dataset (Spark's ``_SUCCESS`` and ``.crc`` files are skipped)."""
    fs, path = filesystem(tables.table_uri(cfg, name))
    return ds.dataset(path, filesystem=fs, format="parquet")


def read_shard(cfg: Config, scope: str, rank: int, processes: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sorted user ids, items in time order) of the users ``user_id % processes == rank`` in ``scope``,
    read batch by batch from the ``sequences`` table (only the shard is kept)."""
    parts = []
    for batch in dataset(cfg, "sequences").to_batches(columns=SEQUENCE_COLUMNS):
        keep = batch.column("user_id").to_numpy() % processes == rank
        parts.append(batch.filter(keep).to_pandas())
    seqs = pd.concat(parts) if parts else pd.DataFrame(columns=SEQUENCE_COLUMNS)
    return sequences.scope_sequences(seqs, scope)


def read_vectors(cfg: Config, name: str, key: str, ids: np.ndarray, scope: str | None,
                 column: str = "vector") -> torch.Tensor:
    """Vectors of table ``name`` (rows of ``scope``, if given) aligned with ``ids``, zeros where missing."""
    table = dataset(cfg, name).to_table(columns=[key, column],
                                        filter=pc.field("scope") == scope if scope is not None else None)
    return torch.from_numpy(tables.aligned_rows(table, key, column, ids, f"table '{name}' (scope {scope!r})"))


def write_artifacts(trained: Trained, cfg: Config, uri: str) -> None:
    """The fit as a model directory (``artifacts``) at ``uri``, any filesystem pyarrow reaches."""
    with tempfile.TemporaryDirectory() as tmp:
        save_artifacts(trained, cfg, Path(tmp))
        fs, path = filesystem(uri)
        fs.create_dir(path, recursive=True)
        pafs.copy_files(tmp, path, destination_filesystem=fs)
