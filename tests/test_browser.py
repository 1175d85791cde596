"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

``dser-spark dashboard`` is started on the fixture warehouse; the test picks a
user the way a person does (types the id, presses Enter), reads the 5 recent
ratings and the recommendations from the page's HTML tables, checks them
against the tables, opens a shared link, and saves screenshots under its
``tmp_path``. Chromium is installed with apt-get when missing (as root);
elsewhere the test is skipped with the reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import serving_warehouse as fx

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing; skip (with the reason) when it cannot be."""
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs apt-get as root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            done = subprocess.run(install, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"apt-get could not install chromium: {done.stderr[-500:]}")
    return CHROMIUM


@pytest.fixture(scope="module")
def root(spark, tmp_path_factory):
    return fx.build(spark, tmp_path_factory.getbasetemp() / "serving-warehouse")


@pytest.fixture(scope="module")
def dashboard(root, tmp_path_factory):
    """``dser-spark dashboard`` on the fixture warehouse; its base URL."""
    port = fx.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = fx.start(fx.cli("dashboard", "--set", f"warehouse.root={root}", "--port", str(port)),
                    f"{url}/_stcore/health", tmp_path_factory.mktemp("dashboard-cwd"))
    yield url
    fx.stop(proc)


@pytest.fixture
def page(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=FLAGS,
                                                       viewport={"width": 1280, "height": 2400})
        yield context.new_page()
        context.close()


def _rows(page, container: str) -> list[list[str]]:
    """The body cells of the HTML table in the container with key ``container``, as text."""
    table = page.locator(f".st-key-{container} table").first
    return [[c.strip() for c in row.locator("th, td").all_inner_texts()] for row in table.locator("tbody tr").all()]


def _wait_for_user(page, user: int | str) -> None:
    page.get_by_role("heading", name=f"User {user}").wait_for(timeout=30_000)
    page.locator(".st-key-recommendations table").first.wait_for(timeout=30_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000)


def test_pick_a_user_and_read_history_and_recommendations(page, dashboard, root, tmp_path):
    want = fx.expected(root)
    items = want["items"]
    page.goto(dashboard)
    search = page.get_by_role("textbox", name="User id")
    search.wait_for(timeout=60_000)
    search.fill("1001")
    search.press("Enter")
    _wait_for_user(page, 1001)

    history = want["history"].query("user_id == 1001").head(5)
    assert _rows(page, "history") == [
        [items.loc[i, "title"], str(int(items.loc[i, "year"])), ", ".join(items.loc[i, "genres"]), f"{r:.1f}",
         t.strftime("%Y-%m-%d")] for i, r, t in zip(history["item_id"], history["rating"], history["ts"])]
    recs = want["recs"][fx.DAY2].query("user_id == 1001").head(5)
    assert [[r[0], r[1], r[4], r[5]] for r in _rows(page, "recommendations")] == [
        [str(rank), items.loc[i, "title"], f"{s:.4f}", src]
        for rank, i, s, src in zip(recs["rank"], recs["item_id"], recs["score"], recs["source"])]
    assert "Entered" in page.locator(".st-key-changes").inner_text()
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_a_shared_link_opens_the_user_and_night(page, dashboard, root, tmp_path):
    want = fx.expected(root)
    page.goto(f"{dashboard}/?user=3&dt={fx.DAY1}")
    _wait_for_user(page, 3)
    titles = [r[1] for r in _rows(page, "recommendations")]
    assert titles == [want["items"].loc[i, "title"] for i in want["recs"][fx.DAY1].query("user_id == 3")["item_id"][:5]]
    assert "first published night" in page.locator(".st-key-changes").inner_text()
    page.goto(f"{dashboard}/?user=424242")
    page.get_by_text("Unknown user id 424242").wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "unknown-user.png"))
    assert Path(tmp_path / "unknown-user.png").is_file()


@pytest.fixture(scope="module")
def own_dashboard(spark, tmp_path_factory):
    """``dser-spark dashboard`` on the fixture warehouse of your own data (string ids); (base URL, root)."""
    root = fx.build(spark, tmp_path_factory.getbasetemp() / "serving-own-ids", own_ids=True)
    port = fx.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = fx.start(fx.cli("dashboard", "--set", f"warehouse.root={root}", "--port", str(port)),
                    f"{url}/_stcore/health", tmp_path_factory.mktemp("own-dashboard-cwd"))
    yield url, root
    fx.stop(proc)


def test_a_user_of_own_data_is_found_by_string_id(page, own_dashboard, tmp_path):
    url, root = own_dashboard
    want = fx.expected(root)
    user = fx.user_source_id(1001)
    page.goto(url)
    search = page.get_by_role("textbox", name="User id")
    search.wait_for(timeout=60_000)
    search.fill(user)
    search.press("Enter")
    _wait_for_user(page, user)
    titles = want["items"]["title"]
    recs = want["recs"][fx.DAY2].query("user_id == @user").head(5)
    assert [r[1] for r in _rows(page, "recommendations")] == [titles[i] for i in recs["item_id"]]
    history = want["history"].query("user_id == @user").head(5)
    assert [r[0] for r in _rows(page, "history")] == [titles[i] for i in history["item_id"]]
    page.screenshot(path=str(tmp_path / "own-ids.png"), full_page=True)
