"""RecBole atomic files: ``<name>.inter`` (ratings) and an optional ``<name>.item``.

Headers are typed (``user_id:token``); ids are tokens, so users and items may be
strings: integer-looking ids are kept, others get dense ids (see ``ratings``).
"""
from __future__ import annotations

import re

from dser_spark.prepare.catalog import Catalog, add_item, make_item
from dser_spark.prepare.errors import DataError
from dser_spark.prepare.lines import ReadLog, first_line, malformed, parse_year, text_lines
from dser_spark.prepare.locate import SourceDir, SourceFile, missing_file_error
from dser_spark.prepare.ratings import RatingsFile, Source

_INT = re.compile(r"^\d{1,9}$")


def _pick_one(root: SourceDir, suffix: str, stem: str) -> SourceFile | None:
    """The ``*.suffix`` file of a RecBole dir (``<stem>.suffix`` if several), None if there is none."""
    paths = root.glob(f"*.{suffix}")
    preferred = [p for p in paths if p.stem == stem]
    if len(paths) > 1 and not preferred:
        raise DataError(f"data.format=recbole: several .{suffix} files in {root} "
                        f"({', '.join(p.name for p in paths)}) and none named {stem}.{suffix}")
    return (preferred or paths or [None])[0]


def _header(path: SourceFile, line: str, wanted: dict[str, tuple[str, ...]],
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


def _items(path: SourceFile, log: ReadLog) -> Catalog:
    """``*.item``: item_id, optional movie_title, release_year, class/genre (space separated)."""
    wanted = {"id": ("item_id",), "title": ("movie_title", "title"),
              "year": ("release_year", "year"), "genres": ("class", "genre", "genres")}
    expected = "a RecBole .item file (header like item_id:token\\tmovie_title:token_seq)"
    lines = text_lines(path, expected, log)
    first = next(lines, (0, ""))
    cols = _header(path, first[1] if first[0] == 1 else "", wanted, ("id",))
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
        year = parse_year(fields[cols["year"]]) if "year" in cols else None
        key = fields[cols["id"]].strip(" ")
        add_item(raw_items, key or None, make_item(title=title or None, year=year, genres=genres),
                 path, line, raw, log)
    if raw_items and all(_INT.match(k) for k in raw_items):
        return Catalog({int(k): v for k, v in raw_items.items()})
    return Catalog(raw_items, tokens=True)


def load_recbole(root: SourceDir, log: ReadLog) -> Source:
    """RecBole atomic files: ``<name>.inter`` (typed header) and optional ``<name>.item``."""
    inter = _pick_one(root, "inter", root.name)
    if inter is None:
        raise missing_file_error(root, "recbole", "a RecBole *.inter file")
    expected = "a RecBole .inter file (header like user_id:token\\titem_id:token\\trating:float\\ttimestamp:float)"
    header = first_line(inter, expected)
    cols = _header(inter, header, {"user": ("user_id",), "item": ("item_id",),
                                   "rating": ("rating",), "ts": ("timestamp",)},
                   ("user", "item", "rating", "ts"))
    spec = RatingsFile(inter, "\t", len(header.split("\t")),
                       (cols["user"], cols["item"], cols["rating"], cols["ts"]),
                       has_header=True, tokens=True)
    items = _pick_one(root, "item", inter.stem)
    if items is None:
        return Source(spec, None, lambda rated: Catalog({k: make_item() for k in rated}))
    return Source(spec, _items(items, log))
