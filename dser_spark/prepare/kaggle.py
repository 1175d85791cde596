"""Kaggle's "The Movies Dataset": MovieLens ratings, TMDB metadata joined through ``links``.

``movies_metadata.csv``, ``keywords.csv`` and ``credits.csv`` are keyed by TMDB id;
``links.csv`` (or ``links_small.csv``) maps each MovieLens movieId to its TMDB id.
``_catalogue_builder`` makes that join for the rated movies: an item gets the
metadata of its linked TMDB id only, never of a TMDB id equal to its movieId.
"""
from __future__ import annotations

import ast
import re
from typing import Any, Callable

from dser_spark.prepare.catalog import Catalog, make_item
from dser_spark.prepare.lines import (
    BAD_ID, DUPLICATE_ID, UNKNOWN_ITEM, ReadLog, bad_list, csv_table, parse_imdb_id, parse_int,
    parse_year,
)
from dser_spark.prepare.locate import SourceDir, SourceFile, optional_file, require_file
from dser_spark.prepare.ml_latest import LINKS_COLUMNS, csv_ratings
from dser_spark.prepare.ratings import Source


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


def _tmdb_table(path: SourceFile, columns: tuple[str, ...], log: ReadLog,
                parse: Callable[[dict[str, str]], dict[str, Any]], known: set[int] | None = None
                ) -> dict[int, dict[str, Any]]:
    """A TMDB-keyed CSV by integer ``id``; rows ``parse`` cannot read are rejected."""
    table: dict[int, dict[str, Any]] = {}
    for line, raw, row in csv_table(path, ("id", *columns), log):
        key = parse_int(row["id"])
        if key is None or key in table or (known is not None and key not in known):
            reason = BAD_ID if key is None else DUPLICATE_ID if key in table else UNKNOWN_ITEM
            log.reject(path, line, raw, reason)
            continue
        try:
            table[key] = parse(row)
        except _BadCell as exc:
            log.reject(path, line, raw, bad_list(exc.column))
    return table


def _metadata_item(row: dict[str, str]) -> dict[str, Any]:
    """One ``movies_metadata.csv`` row as item fields."""
    imdb = row["imdb_id"].strip()
    return make_item(title=row["title"].strip() or None, year=parse_year(row["release_date"]),
                     genres=_names(row, "genres"), overview=row["overview"].strip() or None,
                     imdb_id=imdb if re.match(r"^tt\d+$", imdb) else None)


def _credits_item(row: dict[str, str]) -> dict[str, Any]:
    """One ``credits.csv`` row: cast names in billing order, directors from the crew."""
    return {"cast": _names(row, "cast"),
            "directors": _names(row, "crew", lambda d: d.get("job") == "Director")}


def _links(root: SourceDir, log: ReadLog) -> dict[int, tuple[int | None, str | None]]:
    """MovieLens movieId -> (TMDB id, IMDb id) from ``links.csv`` or ``links_small.csv``."""
    path = require_file(root, "kaggle", "links.csv", "links_small.csv")
    links: dict[int, tuple[int | None, str | None]] = {}
    for line, raw, row in csv_table(path, LINKS_COLUMNS, log):
        movie = parse_int(row["movieId"])
        if movie is None or movie in links:
            log.reject(path, line, raw, BAD_ID if movie is None else DUPLICATE_ID)
        else:
            links[movie] = (parse_int(row["tmdbId"]), parse_imdb_id(row["imdbId"]))
    return links


def _catalogue_builder(root: SourceDir, log: ReadLog) -> Callable[[list[int]], Catalog]:
    """Parse links/metadata/keywords/credits; return a builder of items for the rated movie ids."""
    links = _links(root, log)
    metadata = _tmdb_table(require_file(root, "kaggle", "movies_metadata.csv"),
                           ("title", "genres", "overview", "release_date", "imdb_id"), log, _metadata_item)
    known = set(metadata)
    keywords_path, credits_path = optional_file(root, "keywords.csv"), optional_file(root, "credits.csv")
    keywords = _tmdb_table(keywords_path, ("keywords",), log,
                           lambda r: {"keywords": _names(r, "keywords")}, known) if keywords_path else {}
    credits = _tmdb_table(credits_path, ("cast", "crew"), log, _credits_item, known) if credits_path else {}

    def build(rated: list[int]) -> Catalog:
        """Join each rated movieId to its TMDB rows through ``links``."""
        items = {}
        for movie in rated:
            tmdb, imdb = links.get(movie, (None, None))
            item = dict(metadata.get(tmdb) or make_item())
            item.update(keywords.get(tmdb, {}), **credits.get(tmdb, {}), tmdb_id=tmdb)
            item["imdb_id"] = imdb or item["imdb_id"]
            items[movie] = item
        return Catalog(items)

    return build


def load_kaggle(root: SourceDir, log: ReadLog) -> Source:
    """The Movies Dataset: ``ratings_small.csv`` (else ``ratings.csv``) and TMDB metadata via links."""
    ratings = csv_ratings(require_file(root, "kaggle", "ratings_small.csv", "ratings.csv"))
    return Source(ratings, None, _catalogue_builder(root, log))
