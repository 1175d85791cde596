"""GroupLens releases: ml-100k (``u.data`` + ``u.item``) and ml-1m (``ratings.dat`` + ``movies.dat``)."""
from __future__ import annotations

from dser_spark.prepare.catalog import Catalog, add_item, make_item
from dser_spark.prepare.lines import (
    ReadLog, first_line, malformed, parse_int, parse_pipe_genres, parse_title_year, parse_year,
    text_lines,
)
from dser_spark.prepare.locate import SourceDir, SourceFile, require_file
from dser_spark.prepare.ratings import RatingsFile, Source

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")


def _ml100k_items(path: SourceFile, log: ReadLog) -> Catalog:
    """``u.item``: id|title|release date|video date|imdb url|19 genre flags (latin-1)."""
    items: dict = {}
    width = 5 + len(ML100K_GENRES)
    for line, raw in text_lines(path, "pipe-separated movies (id|title|date|...|19 genre flags)", log):
        log.rows[path.name] += 1
        fields = raw.split("|")
        if len(fields) != width:
            log.reject(path, line, raw, malformed(width))
            continue
        title, year = parse_title_year(fields[1])
        genres = [g for g, flag in zip(ML100K_GENRES, fields[5:]) if flag.strip() == "1"]
        add_item(items, parse_int(fields[0]),
                 make_item(title=title, year=year or parse_year(fields[2]), genres=genres),
                 path, line, raw, log)
    return Catalog(items)


def _ml1m_items(path: SourceFile, log: ReadLog) -> Catalog:
    """``movies.dat``: MovieID::Title (Year)::Genre|Genre (latin-1)."""
    items: dict = {}
    for line, raw in text_lines(path, "MovieID::Title (Year)::Genres lines", log):
        log.rows[path.name] += 1
        fields = raw.split("::")
        if len(fields) != 3:
            log.reject(path, line, raw, malformed(3))
            continue
        title, year = parse_title_year(fields[1])
        add_item(items, parse_int(fields[0]),
                 make_item(title=title, year=year, genres=parse_pipe_genres(fields[2])),
                 path, line, raw, log)
    return Catalog(items)


def load_ml100k(root: SourceDir, log: ReadLog) -> Source:
    """GroupLens ml-100k: ``u.data`` and ``u.item``."""
    data = require_file(root, "ml-100k", "u.data")
    first_line(data, "tab-separated user item rating timestamp lines")
    return Source(RatingsFile(data, "\t", 4, (0, 1, 2, 3)),
                  _ml100k_items(require_file(root, "ml-100k", "u.item"), log))


def load_ml1m(root: SourceDir, log: ReadLog) -> Source:
    """GroupLens ml-1m: ``ratings.dat`` and ``movies.dat``."""
    data = require_file(root, "ml-1m", "ratings.dat")
    first_line(data, "UserID::MovieID::Rating::Timestamp lines")
    return Source(RatingsFile(data, "::", 4, (0, 1, 2, 3)),
                  _ml1m_items(require_file(root, "ml-1m", "movies.dat"), log))
