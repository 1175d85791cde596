"""MovieLens CSV releases (ml-latest(-small), ml-20m/25m/32m): ratings, movies, links, tags."""
from __future__ import annotations

from dser_spark.prepare.catalog import Catalog, add_item, make_item
from dser_spark.prepare.errors import DataError
from dser_spark.prepare.lines import (
    BAD_ID, DUPLICATE_ID, UNKNOWN_ITEM, ReadLog, csv_table, first_line, parse_imdb_id, parse_int,
    parse_pipe_genres, parse_title_year,
)
from dser_spark.prepare.locate import SourceDir, SourceFile, optional_file, require_file
from dser_spark.prepare.ratings import RatingsFile, Source

LINKS_COLUMNS = ("movieId", "imdbId", "tmdbId")


def csv_ratings(path: SourceFile) -> RatingsFile:
    """MovieLens ``ratings.csv`` layout (also Kaggle's): header, then plain numbers."""
    header = "userId,movieId,rating,timestamp"
    found = first_line(path, f"a header {header} and ratings").replace(" ", "")
    if found.split(",")[:4] != header.split(","):
        raise DataError(f"{path.name} line 1: expected the header {header!r}, found {found!r}")
    return RatingsFile(path, ",", 4, (0, 1, 2, 3), has_header=True)


def _movielens_csv_items(root: SourceDir, movies: SourceFile, log: ReadLog) -> Catalog:
    """``movies.csv`` plus optional ``links.csv`` (TMDB/IMDb ids) and ``tags.csv`` (keywords)."""
    items: dict = {}
    for line, raw, row in csv_table(movies, ("movieId", "title", "genres"), log):
        title, year = parse_title_year(row["title"])
        add_item(items, parse_int(row["movieId"]),
                 make_item(title=title, year=year, genres=parse_pipe_genres(row["genres"])),
                 movies, line, raw, log)
    links = optional_file(root, "links.csv")
    if links:
        seen: set[int] = set()
        for line, raw, row in csv_table(links, LINKS_COLUMNS, log):
            movie = parse_int(row["movieId"])
            reason = (BAD_ID if movie is None else UNKNOWN_ITEM if movie not in items
                      else DUPLICATE_ID if movie in seen else None)
            if reason:
                log.reject(links, line, raw, reason)
                continue
            seen.add(movie)
            items[movie].update(tmdb_id=parse_int(row["tmdbId"]), imdb_id=parse_imdb_id(row["imdbId"]))
    tags = optional_file(root, "tags.csv")
    if tags:
        keywords: dict[int, set[str]] = {key: set() for key in items}
        for line, raw, row in csv_table(tags, ("movieId", "tag"), log):
            movie = parse_int(row["movieId"])
            if movie is None or movie not in items:
                log.reject(tags, line, raw, BAD_ID if movie is None else UNKNOWN_ITEM)
            elif row["tag"].strip():
                keywords[movie].add(row["tag"].strip().lower())
        for key, words in keywords.items():
            items[key]["keywords"] = sorted(words)
    return Catalog(items)


def load_ml_latest(root: SourceDir, log: ReadLog) -> Source:
    """ml-latest(-small), ml-20m/25m/32m: ``ratings.csv``, ``movies.csv``, links and tags."""
    ratings = csv_ratings(require_file(root, "ml-latest", "ratings.csv"))
    return Source(ratings, _movielens_csv_items(root, require_file(root, "ml-latest", "movies.csv"), log))
