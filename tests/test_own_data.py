"""Your own data: ``data.format: table | parquet | csv`` through a column mapping, string ids, item metadata."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from dser_spark.config import ConfigError, load_config
from dser_spark.prepare import DataError, prepare
from dser_spark.prepare.own import MISSING_ITEM, MISSING_USER, bad_timestamp

T0 = 1_600_000_000  # epoch seconds of the first event


def parquet_dir(folder: Path, parts: list[pd.DataFrame | pa.Table]) -> Path:
    """A directory of Parquet part files, one per frame."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, part in enumerate(parts):
        table = part if isinstance(part, pa.Table) else pa.Table.from_pandas(part, preserve_index=False)
        pq.write_table(table, folder / f"part-{n}.parquet")
    return folder


def own_config(tmp_path: Path, fmt: str, columns: dict[str, str], *sets: str, where: str = ""):
    mapping = "{" + ", ".join(f"{k}: {v}" for k, v in columns.items()) + "}"
    place = f"data.table={where}" if fmt == "table" else f"data.path={where}"
    return load_config(None, [f"data.format={fmt}", place, f"data.columns={mapping}",
                              f"warehouse.root={tmp_path / 'warehouse'}", *sets])


def interactions_by_source(spark, prepared) -> dict[tuple, tuple]:
    """(source user, source item) -> (rating, epoch seconds, count), through the id maps."""
    users = prepared.id_maps["user_ids"].withColumnRenamed("source_id", "user")
    items = prepared.id_maps["item_ids"].withColumnRenamed("source_id", "item")
    rows = (prepared.interactions.join(users, "user_id").join(items, "item_id")
            .select("user", "item", "rating", F.col("ts").cast("double").alias("t"), "count").collect())
    return {(r["user"], r["item"]): (r["rating"], r["t"], r["count"]) for r in rows}


def rejected(prepared) -> list[tuple]:
    return sorted(tuple(r) for r in prepared.rejected_rows.collect())


# ------------------------------------------------------------------ Parquet, string ids, repeats, rejects
@pytest.fixture(scope="module")
def events_parquet(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("own")
    part0 = pd.DataFrame({"customer": ["c-b", "c-a", "c-a", "c-b"], "sku": ["X1", "X2", "X1", "X1"],
                          "stars": [4.0, 5.0, 2.0, 3.0],
                          "when": [(T0 + s) * 1000.0 for s in (10, 20, 30, 40)]})  # float: part 1 has a null
    part1 = pd.DataFrame({"customer": ["c-a", None, "c-c", "c-c"], "sku": ["X3", "X9", "X2", "X3"],
                          "stars": [1.0, 5.0, float("nan"), 4.0],
                          "when": [(T0 + 50) * 1000, (T0 + 60) * 1000, (T0 + 70) * 1000, None]})
    return parquet_dir(base / "events", [part0, part1])


@pytest.fixture(scope="module")
def prepared_parquet(spark, events_parquet, tmp_path_factory):
    cfg = own_config(tmp_path_factory.mktemp("wh"), "parquet",
                     {"user": "customer", "item": "sku", "rating": "stars", "ts": "when"},
                     "data.max_reject_fraction=0.8", where=str(events_parquet))
    return prepare(spark, cfg)


def test_parquet_events_keep_the_latest_of_each_pair_and_count_them(spark, prepared_parquet):
    got = interactions_by_source(spark, prepared_parquet)
    assert got == {("c-b", "X1"): (3.0, T0 + 40, 2),   # two events: the latest rating and time, count 2
                   ("c-a", "X2"): (5.0, T0 + 20, 1), ("c-a", "X1"): (2.0, T0 + 30, 1),
                   ("c-a", "X3"): (1.0, T0 + 50, 1)}
    assert prepared_parquet.summary["ts_unit"] == "ms"  # auto: the numbers are above 1e11
    assert prepared_parquet.summary["events_merged"] == 1
    assert prepared_parquet.summary["user_ids"] == prepared_parquet.summary["item_ids"] == "string"


def test_parquet_rows_that_do_not_parse_are_rejected_with_file_and_row(prepared_parquet):
    got = rejected(prepared_parquet)
    assert [(source, line, reason) for source, line, _, reason in got] == [
        ("part-1.parquet", 2, MISSING_USER), ("part-1.parquet", 3, "non-numeric rating"),
        ("part-1.parquet", 4, bad_timestamp("ms"))]
    assert json.loads(got[0][2]) == {"customer": None, "sku": "X9", "stars": 5.0, "when": (T0 + 60) * 1000.0}
    summary = prepared_parquet.summary
    assert summary["rows_read"] == {"part-0.parquet": 4, "part-1.parquet": 4}
    assert summary["rejected_total"] == 3 and summary["rejected_by_file"] == {"part-1.parquet": 3}


def test_dense_ids_are_kept_in_the_maps_in_source_order(prepared_parquet):
    users = sorted(tuple(r) for r in prepared_parquet.id_maps["user_ids"].collect())
    items = sorted(tuple(r) for r in prepared_parquet.id_maps["item_ids"].collect())
    assert users == [(1, "c-a"), (2, "c-b")]          # c-c has no good row: no id
    assert items == [(1, "X1"), (2, "X2"), (3, "X3")]
    assert prepared_parquet.id_maps["user_ids"].schema["user_id"].dataType.simpleString() == "int"


def test_reject_fraction_above_the_limit_names_the_file_and_row(spark, events_parquet, tmp_path):
    cfg = own_config(tmp_path, "parquet", {"user": "customer", "item": "sku", "rating": "stars", "ts": "when"},
                     where=str(events_parquet))
    with pytest.raises(DataError, match=r"part-1\.parquet: 3 of 4 rows rejected \(75\.00%\), above data\."
                                        r"max_reject_fraction=0\.01; first bad row 2: .*\(missing user id\)"):
        prepare(spark, cfg)


def test_a_missing_mapped_column_names_the_key_and_the_columns(spark, events_parquet, tmp_path):
    cfg = own_config(tmp_path, "parquet", {"user": "customer_id", "item": "sku", "ts": "when"},
                     where=str(events_parquet))
    with pytest.raises(DataError, match=r"data\.columns\.user: column 'customer_id' is not in .*"
                                        r"its columns: customer, sku, stars, when"):
        prepare(spark, cfg)


# ------------------------------------------------------------------ ids across nights
def test_ids_are_never_reassigned_when_new_users_and_items_arrive(spark, tmp_path):
    from dser_spark import tables

    first = pd.DataFrame({"u": ["m", "z"], "i": [10, 20], "t": [T0, T0 + 1]})
    cfg = own_config(tmp_path, "parquet", {"user": "u", "item": "i", "ts": "t"},
                     where=str(parquet_dir(tmp_path / "night1", [first])))
    p1 = prepare(spark, cfg)
    for name, frame in p1.id_maps.items():
        tables.write_table(spark, cfg, frame, name)
    second = pd.DataFrame({"u": ["a", "m", "z"], "i": [5, 10, 30], "t": [T0 + 2, T0 + 3, T0 + 4]})
    cfg2 = own_config(tmp_path, "parquet", {"user": "u", "item": "i", "ts": "t"},
                      where=str(parquet_dir(tmp_path / "night2", [second])))
    p2 = prepare(spark, cfg2)
    assert sorted(tuple(r) for r in p2.id_maps["user_ids"].collect()) == [(1, "m"), (2, "z"), (3, "a")]
    assert sorted(tuple(r) for r in p2.id_maps["item_ids"].collect()) == [(1, 10), (2, 20), (3, 5), (4, 30)]
    assert p2.id_maps["item_ids"].schema["source_id"].dataType.simpleString() == "bigint"
    assert p2.summary["rating"].startswith("absent") and {r["rating"] for r in p2.interactions.collect()} == {1.0}


# ------------------------------------------------------------------ CSV
def test_csv_with_epoch_seconds_no_rating_and_integer_ids(spark, tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "a.csv").write_text(f"uid;item;at\n7;100;{T0}\n\n7;101;{T0 + 5}\n8;;{T0}\n")
    (folder / "b.csv").write_text(f"uid;item;at\n9;100;yesterday\n8;101;{T0 + 9}\n")
    (folder / "_SUCCESS").write_text("")
    cfg = own_config(tmp_path, "csv", {"user": "uid", "item": "item", "ts": "at"}, "data.csv_separator=;",
                     "data.ts_unit=s", "data.max_reject_fraction=0.5", where=str(folder))
    p = prepare(spark, cfg)
    assert interactions_by_source(spark, p) == {(7, 100): (1.0, T0, 1), (7, 101): (1.0, T0 + 5, 1),
                                                (8, 101): (1.0, T0 + 9, 1)}
    assert p.summary["user_ids"] == p.summary["item_ids"] == "bigint"  # every value an integer
    assert rejected(p) == [("a.csv", 5, f"8;;{T0}", MISSING_ITEM),   # physical lines, the blank one counted
                           ("b.csv", 2, "9;100;yesterday", bad_timestamp("s"))]


def test_csv_files_with_different_headers_are_refused(spark, tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "a.csv").write_text(f"u,i,t\n1,2,{T0}\n")
    (folder / "b.csv").write_text(f"user,i,t\n1,3,{T0}\n")
    cfg = own_config(tmp_path, "csv", {"user": "u", "item": "i", "ts": "t"}, where=str(folder))
    with pytest.raises(DataError, match=r"b\.csv line 1: header \['user', 'i', 't'\] differs"):
        prepare(spark, cfg)


# ------------------------------------------------------------------ catalog table, timestamps, metadata
def test_catalog_table_with_timestamps_and_item_metadata(spark, tmp_path):
    when = [_dt.datetime(2024, 1, d, 12, tzinfo=_dt.timezone.utc) for d in (1, 2, 3)]
    spark.sql("CREATE DATABASE IF NOT EXISTS shop")
    spark.createDataFrame(pd.DataFrame({"who": ["u1", "u1", "u2"], "what": ["b1", "b2", "b1"], "at": when})) \
        .write.mode("overwrite").saveAsTable("shop.plays")
    meta = pd.DataFrame({"key": ["b1", "b1", "b3"], "name": ["One", "Again", "Three"],
                         "tags": [["x", " y "], [], ["z"]], "blurb": ["first book", "dup", "unread"]})
    spark.createDataFrame(meta).write.mode("overwrite").saveAsTable("shop.books")
    cfg = own_config(tmp_path, "table", {"user": "who", "item": "what", "ts": "at"}, "data.items=shop.books",
                     "data.item_columns={item: key, title: name, categories: tags, text: blurb}",
                     "data.max_reject_fraction=0.5", where="shop.plays")
    p = prepare(spark, cfg)
    assert p.summary["ts_unit"] == "timestamp"
    got = interactions_by_source(spark, p)
    assert {k: v[1] for k, v in got.items()} == {("u1", "b1"): when[0].timestamp(), ("u1", "b2"): when[1].timestamp(),
                                                 ("u2", "b1"): when[2].timestamp()}
    items = {r["raw_id"]: r for r in p.items.collect()}
    assert sorted(items) == ["b1", "b2", "b3"]           # metadata-only items get ids too
    assert (items["b1"]["title"], items["b1"]["genres"], items["b1"]["overview"]) == ("One", ["x", "y"], "first book")
    assert items["b2"]["title"] is None                   # rated, without metadata
    assert [(r[3], json.loads(r[2])["name"]) for r in rejected(p)] == [("duplicate id (kept first)", "Again")]


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("sets, key", [
    (["data.format=parquet", "data.path=/x", "data.columns={user: a, item: b}"], r"data\.columns\.ts"),
    (["data.format=parquet", "data.path=/x", "data.columns={user: a, item: b, ts: c, when: d}"],
     r"data\.columns\.when"),
    (["data.format=table", "data.columns={user: a, item: b, ts: c}"], r"data\.table"),
    (["data.format=parquet", "data.columns={user: a, item: b, ts: c}"], r"data\.path"),
    (["data.format=parquet", "data.path=/x", "data.columns={user: a, item: b, ts: c}", "data.items=/y"],
     r"data\.item_columns\.item"),
    (["data.columns={user: a, item: b, ts: c}"], r"data\.columns"),
    (["recommend.user_ids=[1, u7]"], r"recommend\.user_ids\[1\]: MovieLens ids are integers"),
    (["recommend.item_ids=[[1]]"], r"recommend\.item_ids\[0\]: expected int or str"),
])
def test_bad_own_data_settings_name_the_key(sets, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, sets)


def test_listed_ids_keep_the_sources_type():
    cfg = load_config(None, ["data.format=csv", "data.path=/x", "data.columns={user: a, item: b, ts: c}",
                             "recommend.user_ids=[7, c-0042]", "recommend.item_ids=[BK-00417-X]"])
    assert cfg.recommend.user_ids == [7, "c-0042"] and cfg.recommend.item_ids == ["BK-00417-X"]


# ------------------------------------------------------------------ whole nightlies
REPO = Path(__file__).resolve().parents[1]
DT = "2026-01-01"


def _published(spark, cfg) -> pd.DataFrame:
    from dser_spark import partitioned
    return spark.read.parquet(partitioned.location(spark, cfg, "recommendations", DT)).toPandas()


def _hr(spark, cfg) -> dict[str, float]:
    """Sampled HR@10 of every evaluated model."""
    from dser_spark import tables
    m = spark.read.parquet(tables.table_uri(cfg, "metrics")).toPandas()
    rows = m[(m.protocol == "sampled") & (m.metric == "HR") & (m.k == 10)]
    return dict(zip(rows.model, rows.value.astype(float)))


@pytest.mark.slow
def test_bookshop_nightly_publishes_the_sources_string_ids(spark, tmp_path):
    from dser_spark import partitioned, pipeline, tables
    from dser_spark.tables import ValidationError
    from dser_spark.synthetic_books import generate_books

    generate_books(tmp_path / "shop", users=600, books=1500, events=15_000, seed=3)
    events = pq.read_table(tmp_path / "shop" / "events").to_pandas()
    books = pq.read_table(tmp_path / "shop" / "books").to_pandas()
    sets = [f"data.path={tmp_path / 'shop' / 'events'}", f"data.items={tmp_path / 'shop' / 'books'}",
            f"warehouse.root={tmp_path / 'warehouse'}", "train.epochs=2", "embed.epochs=5", "embed.content_epochs=5",
            "evaluate.baselines=[ItemPop]", "evaluate.full_ranking=false", "train.show_progress=false"]
    cfg = load_config(REPO / "conf" / "example-own-data.yaml", sets)
    pipeline.run_nightly(spark, cfg, DT)
    recs = _published(spark, cfg)
    assert recs.user_id.dtype == object and recs.item_id.dtype == object     # strings, as the source has them
    assert set(recs.user_id) == set(events.customer_id)                      # every customer, by their own id
    assert set(recs.item_id) <= set(events.sku) and (recs.groupby("user_id").size() == 10).all()
    seen = set(zip(events.customer_id, events.sku))
    assert not any((u, i) in seen for u, i in zip(recs.user_id, recs.item_id))
    interactions = tables.read_table(spark, cfg, "interactions").toPandas()
    assert len(interactions) == len(seen) and interactions["count"].sum() == len(events)
    titled = spark.sql(f"SELECT * FROM bookshop.recommendations_latest WHERE user_id = '{recs.user_id.iloc[0]}'")
    titles = dict(zip(books.sku, books.title))
    assert [r["title"] for r in titled.orderBy("rank").collect()] == [
        titles.get(i) for i in recs[recs.user_id == recs.user_id.iloc[0]].sort_values("rank").item_id]
    hr = _hr(spark, cfg)
    print(json.dumps(hr))
    # trained and scored through the dense ids: far above chance (10 of 100 candidates); on this small synthetic
    # shop at 2 epochs it does not beat ItemPop (0.485 vs 0.512), which the test does not claim
    assert hr["DSER"] > 0.3

    # recommend for a list of customers by their own ids, over candidate books listed in a Parquet file by SKU
    some = sorted(set(events.customer_id))[:3]
    skus = sorted(set(events.sku))[:200]
    parquet_dir(tmp_path / "wanted", [pd.DataFrame({"item_id": skus + ["BK-99999-Z"]})])
    listed = load_config(REPO / "conf" / "example-own-data.yaml", [
        *sets, f"recommend.user_ids=[{', '.join([*some, 'no-such-customer'])}]", f"recommend.items={tmp_path / 'wanted'}"])
    pipeline.run_stage(spark, listed, "recommend", "2026-01-02")
    again = spark.read.parquet(partitioned.location(spark, cfg, "recommendations", "2026-01-02")).toPandas()
    assert set(again.user_id) == set(some) and set(again.item_id) <= set(skus) and len(again) == 30
    nobody = load_config(REPO / "conf" / "example-own-data.yaml", [*sets, "recommend.user_ids=[nobody]"])
    with pytest.raises(ValidationError, match="none of the 1 ids is in user_ids"):
        pipeline.run_stage(spark, nobody, "recommend", "2026-01-03")


@pytest.mark.slow
def test_ml100k_as_parquet_with_string_users_reaches_the_builtin_hr(spark, ml100k_nightlies, tmp_path):
    from dser_spark import pipeline, tables
    from nightlies import CONFIG, SETS

    ref = ml100k_nightlies.local
    inter = tables.read_table(spark, ref, "interactions").toPandas()
    items = tables.read_table(spark, ref, "items").toPandas()
    half = len(inter) // 2
    epoch_ms = (inter.ts - pd.Timestamp("1970-01-01")) // pd.Timedelta("1ms")
    export = pd.DataFrame({"viewer": "u" + inter.user_id.astype(str), "film": inter.item_id.astype("int64"),
                           "stars": inter.rating, "seen_at": epoch_ms})
    parquet_dir(tmp_path / "events", [export.iloc[:half], export.iloc[half:]])
    parquet_dir(tmp_path / "movies", [pd.DataFrame({"film": items.item_id.astype("int64"), "name": items.title,
                                                    "kinds": items.genres})])
    cfg = load_config(CONFIG, [*SETS, "data.format=parquet", f"data.path={tmp_path / 'events'}",
                               "data.columns={user: viewer, item: film, rating: stars, ts: seen_at}",
                               f"data.items={tmp_path / 'movies'}", "data.item_columns={item: film, title: name, "
                               "categories: kinds}", f"warehouse.root={tmp_path / 'warehouse'}",
                               "warehouse.database=dser_own"])
    pipeline.run_nightly(spark, cfg, DT)
    own, builtin = _hr(spark, cfg)["DSER"], _hr(spark, ref)["DSER"]
    print(json.dumps({"builtin_hr10": builtin, "own_parquet_hr10": own}))
    assert abs(own - builtin) <= 0.02
    recs = _published(spark, cfg)
    assert recs.user_id.str.startswith("u").all() and recs.item_id.dtype == "int64"
    assert set(recs.user_id) == set(export.viewer)

    from dser_spark.serving import views
    from dser_spark.serving.store import load

    snap = load(tmp_path / "warehouse")  # the dashboard's and the API's view: string users, 64-bit items
    assert snap.string_users and not snap.string_items
    served = views.recommendations(snap, views.user_key(snap, "u196"))
    assert [r["item_id"] for r in served["items"]] == recs.query("user_id == 'u196'").sort_values("rank").item_id.tolist()
    assert served["items"][0]["title"] == items.set_index("item_id").title[served["items"][0]["item_id"]]
    assert views.history(snap, "u196")["total"] == (export.viewer == "u196").sum()


