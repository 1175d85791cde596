"""The read-only API over a small published warehouse: answers equal the tables, hostile inputs get 404/422,
nothing is writable, and a newly published night is served without a restart, never half-published."""
from __future__ import annotations

import shutil
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

import serving_warehouse as fx
from dser_spark.serving import api, store as store_module
from dser_spark.serving.store import Store


@pytest.fixture(scope="module")
def root(spark, tmp_path_factory):
    return fx.build(spark, tmp_path_factory.getbasetemp() / "serving-warehouse")


@pytest.fixture(scope="module")
def client(root):
    return TestClient(api.create_app(Store(root, reload_seconds=0)))


@pytest.fixture(scope="module")
def own_root(spark, tmp_path_factory):
    return fx.build(spark, tmp_path_factory.getbasetemp() / "serving-own-ids", own_ids=True)


@pytest.fixture(scope="module")
def own_client(own_root):
    return TestClient(api.create_app(Store(own_root, reload_seconds=0)))


def test_recommendations_history_item_and_health_equal_the_tables(client, root):
    want = fx.expected(root)
    got = client.get("/users/3/recommendations").json()
    recs = want["recs"][fx.DAY2].query("user_id == 3")
    assert got["dt"] == fx.DAY2 and got["model_id"] == fx.MODEL_ID
    assert [(r["rank"], r["item_id"], r["source"]) for r in got["items"]] == list(zip(recs["rank"], recs["item_id"],
                                                                                     recs["source"]))
    assert [r["score"] for r in got["items"]] == pytest.approx(recs["score"].tolist())
    assert got["items"][0]["title"] == want["items"].loc[got["items"][0]["item_id"], "title"]

    first = client.get("/users/3/recommendations", params={"k": 2, "dt": fx.DAY1}).json()
    assert first["dt"] == fx.DAY1 and [r["item_id"] for r in first["items"]] == \
        want["recs"][fx.DAY1].query("user_id == 3")["item_id"].tolist()[:2]

    hist = client.get("/users/1001/history", params={"limit": 3}).json()
    rows = want["history"].query("user_id == 1001")
    assert hist["total"] == len(rows) and [h["item_id"] for h in hist["items"]] == rows["item_id"].tolist()[:3]
    assert [h["ts"][:19] for h in hist["items"]] == [t.isoformat()[:19] for t in rows["ts"][:3]]

    unicode_item = client.get("/items/7").json()
    assert unicode_item["title"] == "Amélie — l'ünïcode" and client.get("/items/13").json()["year"] is None

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["latest_dt"] == fx.DAY2 and health["dts"] == [fx.DAY1, fx.DAY2]
    assert health["rows"] == {"recommendations": len(want["recs"][fx.DAY2]), "users": 8,
                              "items": fx.N_ITEMS, "interactions": len(want["history"])}


@pytest.mark.parametrize("path,params,status", [
    ("/users/-1/recommendations", {}, 404),                          # negative id: a well-formed, unknown id
    ("/users/99999/recommendations", {}, 404),
    ("/users/9223372036854775807/history", {}, 404),
    ("/users/99999999999999999999999/recommendations", {}, 422),     # beyond int64
    ("/users/7/history", {}, 404),                                   # recommended (popular), no ratings
    ("/items/0", {}, 404),
    ("/items/-5", {}, 404),
    ("/users/abc/recommendations", {}, 422),
    ("/users/1.5/recommendations", {}, 422),
    ("/users/1 OR 1=1/recommendations", {}, 422),
    ("/users/1;DROP TABLE recommendations/history", {}, 422),
    ("/users/１/recommendations", {}, 422),                           # a full-width digit
    ("/users/é/history", {}, 422),
    ("/items/1' OR '1'='1", {}, 422),
    ("/users/3/recommendations", {"k": 0}, 422),
    ("/users/3/recommendations", {"k": -3}, 422),
    ("/users/3/recommendations", {"k": 10 ** 9}, 422),
    ("/users/3/recommendations", {"k": fx.K + 1}, 422),               # more than the night publishes
    ("/users/3/recommendations", {"k": "1; SELECT 1"}, 422),
    ("/users/3/recommendations", {"dt": "2026-13-01"}, 422),
    ("/users/3/recommendations", {"dt": "../../etc/passwd"}, 422),
    ("/users/3/recommendations", {"dt": "2026-05-01/../../x"}, 422),
    ("/users/3/recommendations", {"dt": "2026-05-01' OR '1'='1"}, 422),
    ("/users/3/recommendations", {"dt": "1999-01-01"}, 422),         # a date, not published
    ("/users/3/recommendations", {"dt": "２０２６-05-01"}, 422),
    ("/users/3/history", {"limit": 0}, 422),
    ("/users/3/history", {"limit": 10 ** 9}, 422),
])
def test_hostile_inputs_are_refused_with_404_or_422(client, path, params, status):
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert "detail" in response.json()


def test_own_data_is_served_by_the_sources_string_ids(own_client, own_root):
    want = fx.expected(own_root)
    user = fx.user_source_id(1001)
    got = own_client.get(f"/users/{user}/recommendations", params={"k": 4}).json()
    recs = want["recs"][fx.DAY2].query("user_id == @user")
    assert got["user_id"] == user and [r["item_id"] for r in got["items"]] == recs["item_id"].tolist()[:4]
    assert all(r["item_id"].startswith("BK-") for r in got["items"])
    assert [r["title"] for r in got["items"]] == [want["items"].loc[i, "title"]
                                                   for i in recs["item_id"][:4]]
    hist = own_client.get(f"/users/{user}/history").json()
    rows = want["history"].query("user_id == @user")
    assert hist["total"] == len(rows) and [h["item_id"] for h in hist["items"]] == rows["item_id"].tolist()
    sku = fx.item_source_id(7)
    item = own_client.get(f"/items/{sku}").json()
    assert item["item_id"] == sku and item["title"] == "Amélie — l'ünïcode" and "raw_id" not in item
    for path in (f"/users/{fx.user_source_id(424242)}/history", "/users/3/recommendations", "/items/7",
                 "/users/1 OR 1=1/history", f"/items/{sku.lower()}"):
        assert own_client.get(path).status_code == 404, path
    assert own_client.get(f"/users/{'x' * 300}/history").status_code == 422
    health = own_client.get("/health").json()
    assert health["rows"]["users"] == 8 and health["rows"]["items"] == fx.N_ITEMS


def test_nothing_is_writable_and_the_schema_is_the_contract(client):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert client.request(method, "/users/3/recommendations").status_code == 405
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/users/{user_id}/recommendations", "/users/{user_id}/history",
                                    "/items/{item_id}", "/health"}
    assert all(set(ops) == {"get"} for ops in schema["paths"].values())
    params = {p["name"]: p["schema"] for p in schema["paths"]["/users/{user_id}/recommendations"]["get"]["parameters"]}
    assert params["user_id"]["type"] == "string" and params["k"]["anyOf"][0]["maximum"] == api.MAX_K
    assert params["dt"]["anyOf"][0]["format"] == "date"
    item = schema["components"]["schemas"]["Recommendation"]["properties"]
    assert {"rank", "item_id", "title", "year", "genres", "score", "source"} <= set(item)


def test_unavailable_until_published_and_for_a_wrong_path(tmp_path):
    missing = TestClient(api.create_app(Store(tmp_path / "nowhere", reload_seconds=0)))
    assert missing.get("/health").status_code == 503
    assert "no warehouse at" in missing.get("/health").json()["detail"]
    assert missing.get("/users/1/recommendations").status_code == 503
    (tmp_path / "empty").mkdir()
    empty = TestClient(api.create_app(Store(tmp_path / "empty", reload_seconds=0)))
    assert "nothing published yet" in empty.get("/health").json()["detail"]


@pytest.mark.slow
def test_a_night_published_while_serving_is_served_without_restart_never_half_written(spark, root, tmp_path,
                                                                                       monkeypatch):
    live = tmp_path / "warehouse"
    shutil.copytree(root, live)
    store = Store(live, reload_seconds=0)
    client = TestClient(api.create_app(store))
    assert client.get("/health").json()["latest_dt"] == fx.DAY2

    # a night being written: a version directory (with a torn file) no manifest points to yet
    being_written = live / "recommendations" / f"dt={fx.DAY3}" / "20990101T000000-0badcafe"
    being_written.mkdir(parents=True)
    (being_written / "part-00000.parquet").write_bytes(b"PAR1 torn")
    assert client.get("/users/3/recommendations", params={"dt": fx.DAY3}).status_code == 422
    assert store.wait().dts == [fx.DAY1, fx.DAY2]

    # the publisher points the manifest at DAY3: the next request starts a reload; until it is complete
    # the previous snapshot answers (the load is held here to prove it), then the new one
    release, real_load = threading.Event(), store_module.load
    monkeypatch.setattr(store_module, "load", lambda r: (release.wait(30), real_load(r))[1])
    fx.publish(spark, fx.config(live), fx.DAY3)
    assert client.get("/health").json()["latest_dt"] == fx.DAY2
    assert client.get("/users/3/recommendations", params={"dt": fx.DAY3}).status_code == 422
    release.set()
    assert store.wait().latest == fx.DAY3
    got = client.get("/users/3/recommendations").json()
    want = fx.recommendations(fx.DAY3).query("user_id == 3")
    assert got["dt"] == fx.DAY3 and [r["item_id"] for r in got["items"]] == want["item_id"].tolist()
    assert not being_written.exists()  # the publisher removed what no pointer names


def test_a_failed_reload_keeps_the_previous_snapshot_and_says_so(root, tmp_path, monkeypatch):
    live = tmp_path / "warehouse"
    shutil.copytree(root, live)
    store = Store(live, reload_seconds=0, retry_wait=0)
    client = TestClient(api.create_app(store))
    calls = []

    def failing(r):
        calls.append(r)
        raise OSError("a version removed by retention mid-read")

    monkeypatch.setattr(store_module, "load", failing)
    manifest = live / "recommendations" / "_published.json"
    manifest.write_text(manifest.read_text())  # a new manifest version
    client.get("/health")
    store.wait()
    health = client.get("/health").json()
    assert len(calls) == 3 and health["latest_dt"] == fx.DAY2 and "retention mid-read" in health["reload_error"]
    client.get("/health")
    assert len(calls) == 3  # the same manifest version is not retried in a loop


@pytest.mark.slow
def test_serve_command_starts_on_the_configured_warehouse(root, tmp_path):
    port = fx.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = fx.start(fx.cli("serve", "--set", f"warehouse.root={root}", "--port", str(port)), f"{url}/health", tmp_path)
    try:
        health = httpx.get(f"{url}/health").json()
        assert health["latest_dt"] == fx.DAY2 and health["model_id"] == fx.MODEL_ID
        assert httpx.get(f"{url}/users/1/recommendations", params={"k": 1}).json()["items"][0]["rank"] == 1
    finally:
        fx.stop(proc)
