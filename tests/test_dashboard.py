"""The dashboard's logic without a browser: the views it shows, the user search at 160k users, the architecture
drawn from the model, and the page itself through Streamlit's AppTest (links, unknown users, empty warehouses)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import serving_warehouse as fx
from dser_spark.serving import diagram, views
from dser_spark.serving.launch import APP
from dser_spark.serving.store import Night, Offsets, Snapshot, load, local_root


@pytest.fixture(scope="module")
def root(spark, tmp_path_factory):
    return fx.build(spark, tmp_path_factory.getbasetemp() / "serving-warehouse")


@pytest.fixture(scope="module")
def snap(root):
    return load(root)


def test_views_show_the_tables(snap, root):
    want = fx.expected(root)
    recs = views.recommendations(snap, 1001, fx.DAY1, k=3)
    assert [r["item_id"] for r in recs["items"]] == \
        want["recs"][fx.DAY1].query("user_id == 1001")["item_id"][:3].tolist()
    past = views.history(snap, 1, 5)
    rows = want["history"].query("user_id == 1")
    assert past["total"] == len(rows) == 4 and [h["item_id"] for h in past["items"]] == rows["item_id"].tolist()
    assert [h["rating"] for h in past["items"]] == pytest.approx(rows["rating"].tolist())
    diff = views.changes(snap, 3, fx.DAY2)
    before = set(want["recs"][fx.DAY1].query("user_id == 3")["item_id"])
    after = set(want["recs"][fx.DAY2].query("user_id == 3")["item_id"])
    assert diff["previous_dt"] == fx.DAY1 and diff["entered"] and diff["left"]
    assert {i["item_id"] for i in diff["entered"]} == after - before
    assert {i["item_id"] for i in diff["left"]} == before - after
    assert views.changes(snap, 3, fx.DAY1)["previous_dt"] is None
    dt, mid, tables = views.latest_metrics(snap)
    assert (dt, mid) == (fx.DAY2, fx.MODEL_ID) and tables["sampled"].loc["DSER", "HR@10"] == pytest.approx(0.71)
    assert views.quality_over_nights(snap, 10)["DSER HR@10"].tolist() == pytest.approx([0.70, 0.71])


def test_views_and_search_of_own_data_use_the_sources_string_ids(spark, tmp_path_factory):
    root = fx.build(spark, tmp_path_factory.getbasetemp() / "serving-own-ids", own_ids=True)
    snap, want = load(root), fx.expected(root)
    user = fx.user_source_id(3)
    assert snap.string_users and snap.string_items and views.user_key(snap, user) == user
    recs = views.recommendations(snap, user, fx.DAY1)
    assert [r["item_id"] for r in recs["items"]] == want["recs"][fx.DAY1].query("user_id == @user")["item_id"].tolist()
    diff = views.changes(snap, user, fx.DAY2)
    assert diff["entered"] and all(i["item_id"].startswith("BK-") and i["title"] for i in diff["entered"])
    assert views.history(snap, user, 2)["items"][0]["item_id"] == want["history"].query("user_id == @user").item_id.iloc[0]
    ids = sorted(fx.user_source_id(u) for u in [*fx.USERS, 7])
    assert views.search_users(snap, None, "", 3) == (ids[:3], 8)
    prefix = user[:6]
    assert views.search_users(snap, None, prefix, 5) == ([i for i in ids if i.startswith(prefix)], 1)
    assert views.search_users(snap, None, "zz", 5) == ([], 0)
    with pytest.raises(views.NotFound):
        views.recommendations(snap, "3")


def test_user_search_at_160k_users_reads_ranges_not_every_id():
    users = np.arange(1, 162_542, dtype=np.int64)
    night = Night("2026-01-01", Offsets(users, np.arange(len(users) + 1)), *([np.zeros(len(users))] * 4), ("model",),
                  ("m",), 1)
    snap = Snapshot(Path("/nowhere"), {"2026-01-01": night})
    assert views.search_users(snap, None, "16254", 5) == ([16254, 162540, 162541], 3)
    found, total = views.search_users(snap, None, "12", 4)
    assert found == [12, 120, 121, 122] and total == 1 + 10 + 100 + 1000 + 10000
    assert views.search_users(snap, None, "", 3) == ([1, 2, 3], len(users))
    assert views.search_users(snap, None, "0", 3) == ([], 0)
    assert views.search_users(snap, None, "9" * 19, 3) == ([], 0)
    with pytest.raises(views.BadParameter):
        views.search_users(snap, None, "12; DROP", 3)


def test_the_architecture_is_drawn_from_the_model_itself(snap):
    arch = snap.models[fx.MODEL_ID].architecture
    assert (arch.users, arch.items, arch.vector_size, arch.content_size) == (len(fx.USERS), fx.N_ITEMS, 8, 4)
    assert arch.gmf_dim == 6 and arch.mlp_layers == (12, 5) and arch.windows == (3, 1)
    assert arch.recency_weights == pytest.approx((1.0, 0.0)) and arch.long_term_weight == 0.0
    dot = diagram.dot(arch)
    for text in ("user ID embedding\\n7 x 6", "user 8 -> 12", "item 8+4 -> 12", "linear 12 -> 5", "linear 11 -> 1",
                 "last 3 x +1.00"):
        assert text in dot
    assert any("ReLU tower 12 -> 5" in line for line in diagram.describe(arch))


def test_local_root_accepts_paths_and_file_uris_only(tmp_path):
    assert local_root(f"file://{tmp_path}") == local_root(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="local warehouse"):
        local_root("hdfs://nn/warehouse")


def _page(monkeypatch, root: Path, **params: str) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(APP), "--warehouse", str(root), "--reload-seconds", "0"])
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(params)
    return at.run()


def _texts(at: AppTest) -> str:
    return " ".join(str(e.value) for kind in (at.error, at.warning, at.info, at.markdown) for e in kind)


def test_a_link_opens_the_users_page(monkeypatch, root):
    at = _page(monkeypatch, root, user="1001", dt=fx.DAY1)
    assert not at.exception
    want = fx.expected(root)
    assert at.header[0].value == "User 1001"
    history = at.table[0].value
    assert history["Title"].tolist() == [want["items"].loc[i, "title"] for i in
                                         want["history"].query("user_id == 1001")["item_id"][:5]]
    recs = at.table[1].value
    expected = want["recs"][fx.DAY1].query("user_id == 1001")
    assert recs["Rank"].tolist() == [1, 2, 3, 4, 5] and recs["Source"].tolist() == expected["source"][:5].tolist()
    assert recs["Title"].tolist() == [want["items"].loc[i, "title"] for i in expected["item_id"][:5]]
    at.slider(key="k").set_value(fx.K).run()
    assert len(at.table[1].value) == fx.K
    assert "first published night" in _texts(at)


def test_typing_an_unknown_id_or_a_bad_dt_says_so(monkeypatch, root):
    at = _page(monkeypatch, root, dt="1999-01-01")
    assert "not published" in _texts(at) and "Type a user id" in _texts(at)
    at.text_input(key="user").input("10").run()
    assert "Unknown user id 10" in _texts(at) and "1 ids start with 10" in _texts(at)
    at.text_input(key="user").input("x1").run()
    assert "user ids are integers" in _texts(at)
    at.text_input(key="user").input("3").run()
    assert at.header[0].value == "User 3" and "Since the previous night (2026-05-01)" in [s.value for s in at.subheader]


def test_a_link_opens_a_user_of_own_data_by_string_id(monkeypatch, spark, tmp_path_factory):
    root = fx.build(spark, tmp_path_factory.getbasetemp() / "serving-own-ids", own_ids=True)
    user = fx.user_source_id(1001)
    at = _page(monkeypatch, root, user=user)
    assert not at.exception and at.header[0].value == f"User {user}"
    want = fx.expected(root)
    titles = want["items"]["title"]
    assert at.table[1].value["Title"].tolist() == [titles[i] for i in
                                                   want["recs"][fx.DAY2].query("user_id == @user")["item_id"][:5]]
    at.text_input(key="user").input(user[:3]).run()
    assert f"ids start with {user[:3]}" in _texts(at)


@pytest.mark.parametrize("where,message", [("nowhere", "no warehouse at"), ("empty", "nothing published yet")])
def test_clear_messages_without_published_tables(monkeypatch, tmp_path, where, message):
    (tmp_path / "empty").mkdir()
    at = _page(monkeypatch, tmp_path / where)
    assert not at.exception and message in at.error[0].value

