"""Reading small files on the driver: decoding, lines, CSV records, field parsing, rejects.

Every rejected row is recorded in a ``ReadLog`` with its file, physical line, raw
text and reason; the reason strings are the ``reason`` column of ``rejected_rows``.
"""
from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

from dser_spark.prepare.errors import DataError
from dser_spark.prepare.locate import SourceFile

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


def malformed(n_fields: int) -> str:
    """Reason for a line with the wrong number of fields."""
    return f"malformed line (expected {n_fields} fields)"


def bad_list(column: str) -> str:
    """Reason for a Python-literal list cell that does not parse."""
    return f"bad list literal in {column}"


# ------------------------------------------------------------------ reject accounting
@dataclass
class ReadLog:
    """Rejected rows, data rows read and skipped blank lines, per file (driver side)."""

    rejects: list[tuple[str, int, str, str]] = field(default_factory=list)
    rows: Counter = field(default_factory=Counter)
    blank: int = 0
    spark_rejects: dict[str, int] = field(default_factory=dict)  # ratings file: reason -> count
    spark_samples: list[tuple[int, str | None, str]] = field(default_factory=list)  # first per reason

    def reject(self, path: SourceFile, line: int, raw: str, reason: str) -> None:
        self.rejects.append((path.name, line, raw, reason))

    def rejects_by_file(self, ratings_name: str) -> Counter:
        """Rejected rows per file name, the ratings file's counted in Spark included."""
        by_file = Counter(r[0] for r in self.rejects)
        by_file[ratings_name] += sum(self.spark_rejects.values())
        return by_file


def check_reject_fractions(log: ReadLog, max_fraction: float, ratings_name: str,
                           ratings_raw: Callable[[int], str]) -> None:
    """DataError for the first file whose rejected fraction exceeds ``max_fraction``.

    ``ratings_raw`` gives the text of a ratings line whose sample travelled without it.
    """
    by_file = log.rejects_by_file(ratings_name)
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


# ------------------------------------------------------------------ lines and records
def _decode(path: SourceFile, expected: str) -> str:
    """Whole file as text: UTF-8 (BOM allowed), else latin-1; empty -> DataError."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path.name} is empty: expected {expected}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def first_line(path: SourceFile, expected: str) -> str:
    """Line 1 of a (possibly huge) file, read without loading the file."""
    if path.size == 0:
        raise DataError(f"{path.name} is empty: expected {expected}")
    return path.read_first_line().decode("utf-8-sig", errors="replace").rstrip("\r\n")


def text_lines(path: SourceFile, expected: str, log: ReadLog) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of non-blank lines; LF, CRLF and CR line ends."""
    for number, line in enumerate(io.StringIO(_decode(path, expected), newline=""), start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield number, text
        else:
            log.blank += 1


def _csv_records(path: SourceFile, expected: str, log: ReadLog) -> Iterator[tuple[int, str, list[str]]]:
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


def csv_table(path: SourceFile, columns: tuple[str, ...], log: ReadLog
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


# ------------------------------------------------------------------ field parsing
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")
_FLOAT_INT = re.compile(r"^(\d{1,9})(?:\.0*)?$")


def parse_title_year(text: str) -> tuple[str | None, int | None]:
    """``"Toy Story (1995)"`` -> ("Toy Story", 1995); no trailing year -> (text, None)."""
    text = text.strip()
    match = _TITLE_YEAR.match(text)
    if match and match.group(1):
        return match.group(1), int(match.group(2))
    return text or None, None


def parse_int(text: str | None) -> int | None:
    """``"862"`` or ``"862.0"`` -> 862; anything else -> None."""
    match = _FLOAT_INT.match((text or "").strip())
    return int(match.group(1)) if match else None


def parse_year(text: str | None) -> int | None:
    """Year from ``"1995"``, ``"1995.0"``, ``"1995-10-30"`` or ``"01-Jan-1995"``."""
    match = re.search(r"(?<!\d)(\d{4})(?!\d)", text or "")
    return int(match.group(1)) if match else None


def parse_pipe_genres(text: str) -> list[str]:
    """``"Comedy|Drama"`` -> ["Comedy", "Drama"]; ``"(no genres listed)"`` -> []."""
    text = text.strip()
    return [] if text in ("", "(no genres listed)") else [g for g in text.split("|") if g]


def parse_imdb_id(text: str | None) -> str | None:
    """``"0114709"`` -> ``"tt0114709"``; anything else -> None."""
    value = parse_int(text)
    return f"tt{value:07d}" if value is not None else None
