"""The dashboard page (Streamlit), started by ``dser-spark dashboard``:
``streamlit run app.py -- --warehouse ROOT [--reload-seconds S]``.

One user at a time: their recent ratings, their recommendations on a published
night and what changed since the night before, then the serving model's
architecture and quality. ``?user=ID&dt=YYYY-MM-DD`` opens a user directly.
The data comes from ``store`` (cached for every session with
``st.cache_resource``, reloaded when a night is published) through ``views``;
tables are HTML tables (``st.table``), readable as text.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from dser_spark.serving import diagram, views
from dser_spark.serving.store import Key, Snapshot, Store

HISTORY_ROWS = 5
DEFAULT_K = 5
SUGGESTIONS = 20


@st.cache_resource(show_spinner="Loading the published tables ...")
def store(root: str, reload_seconds: float) -> Store:
    """One store per warehouse for every session of this server."""
    return Store(Path(root), reload_seconds)


def arguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dser-spark dashboard app")
    p.add_argument("--warehouse", required=True, help="local warehouse root")
    p.add_argument("--reload-seconds", type=float, default=2.0)
    return p.parse_args(argv)


def _genres(values: list[str]) -> str:
    return ", ".join(values)


def _year(value: int | None) -> str:
    return "" if value is None else str(value)


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """Recent ratings as shown: title, year, genres, rating, date."""
    return pd.DataFrame({"Title": [r["title"] or f"item {r['item_id']}" for r in rows],
                         "Year": [_year(r["year"]) for r in rows], "Genres": [_genres(r["genres"]) for r in rows],
                         "Rating": ["" if r["rating"] is None else f"{r['rating']:.1f}" for r in rows],
                         "Date": [r["ts"][:10] for r in rows]})


def recommendations_frame(rows: list[dict]) -> pd.DataFrame:
    """Recommendations as shown: rank, title, year, genres, score, source."""
    return pd.DataFrame({"Rank": [r["rank"] for r in rows],
                         "Title": [r["title"] or f"item {r['item_id']}" for r in rows],
                         "Year": [_year(r["year"]) for r in rows], "Genres": [_genres(r["genres"]) for r in rows],
                         "Score": [f"{r['score']:.4f}" for r in rows], "Source": [r["source"] for r in rows]})


def _titles(rows: list[dict]) -> str:
    return "\n".join(f"- {r['title'] or 'item'} ({_year(r['year']) or 'n/a'}), item {r['item_id']}" for r in rows)


def start_from_link(snap: Snapshot) -> None:
    """On a session's first run, take the user and the night from ``?user=&dt=``; keep the night valid."""
    params = st.query_params
    if "user" not in st.session_state:
        st.session_state["user"] = params.get("user", "").strip()
    if "dt" not in st.session_state:
        linked = params.get("dt")
        if linked and linked not in snap.nights:
            st.session_state["link_problem"] = f"dt={linked} in the link is not published; showing {snap.latest}."
        st.session_state["dt"] = linked if linked in snap.nights else snap.latest
    if st.session_state["dt"] not in snap.nights:  # dropped by retention since
        st.session_state["dt"] = snap.latest


def _pick(key: str) -> None:
    st.session_state["user"] = str(st.session_state[key])


def choose_user(snap: Snapshot, dt: str) -> Key | None:
    """The sidebar's user search: an id typed (matched as you type) or one picked among the matches."""
    text = st.sidebar.text_input("User id", key="user", placeholder="type an id or its start", live="300ms",
                                 help="the source's user id; matching ids are listed as you type").strip()
    try:
        matches, total = views.search_users(snap, dt, text, SUGGESTIONS)
    except views.BadParameter as exc:
        st.sidebar.error(str(exc))
        return None
    exact = text != "" and matches[:1] == [views.user_key(snap, text)]
    if not exact and matches:
        what = f"Users starting with {text}" if text else f"Users of {dt}"
        key = f"pick-{dt}-{text}"
        st.sidebar.selectbox(f"{what} ({len(matches)} of {total:,})", matches, index=None, key=key,
                             on_change=_pick, args=(key,), placeholder="choose a user")
    if text and not exact:
        st.warning(f"Unknown user id {text}: no user has recommendations in dt={dt}"
                   + (f"; {total:,} ids start with {text} (see the sidebar)." if total else "."))
    elif not text:
        st.info(f"Type a user id in the sidebar, or pick one: {total:,} users in dt={dt}.")
    return matches[0] if exact else None


def user_page(snap: Snapshot, dt: str, user: Key) -> None:
    """History, recommendations and the change since the night before, for one user."""
    recs = views.recommendations(snap, user, dt)
    n = snap.nights[dt]
    st.header(f"User {user}")
    try:
        past = views.history(snap, user, HISTORY_ROWS)
    except views.NotFound:
        past = {"total": 0, "items": []}
    st.caption(f"dt={dt} · model {recs['model_id']} · {past['total']:,} ratings in all")
    with st.container(key="history"):
        st.subheader("Most recent ratings")
        if past["items"]:
            st.table(history_frame(past["items"]), hide_index=True)
        else:
            st.write("No ratings: recommended from popularity.")
    with st.container(key="recommendations"):
        st.subheader("Recommendations")
        k = st.slider("How many", 1, n.k, min(DEFAULT_K, n.k), key="k") if n.k > 1 else 1
        st.table(recommendations_frame(recs["items"][:k]), hide_index=True)
    with st.container(key="changes"):
        diff = views.changes(snap, user, dt)
        if diff["previous_dt"] is None:
            st.subheader("Since the previous night")
            st.write(f"{dt} is the first published night: nothing to compare with.")
        else:
            st.subheader(f"Since the previous night ({diff['previous_dt']})")
            if not diff["entered"] and not diff["left"]:
                st.write("The same items as the night before.")
            entered, left = st.columns(2)
            entered.markdown("**Entered**\n\n" + (_titles(diff["entered"]) or "none"))
            left.markdown("**Left**\n\n" + (_titles(diff["left"]) or "none"))


def model_section(snap: Snapshot, dt: str) -> None:
    """The serving model's architecture, its latest evaluation and the quality across nights."""
    n = snap.nights[dt]
    for mid in n.model_ids:
        info = snap.models.get(mid)
        with st.expander(f"DSER architecture of model {mid}"):
            if info is None or info.architecture is None:
                st.write(f"No manifest with a config for model {mid} under {snap.root / 'models'}.")
                continue
            st.graphviz_chart(diagram.dot(info.architecture), alt="DSER architecture diagram")
            st.markdown("\n".join(f"- {line}" for line in diagram.describe(info.architecture)))
    st.header("Model quality")
    mdt, mid, tables = views.latest_metrics(snap)
    if not tables:
        st.write("No metrics yet: `dser-spark evaluate` writes them.")
        return
    st.caption(f"Evaluation of dt={mdt}, model {mid} (test split; sampled: among 99 negatives, full: every item)")
    for protocol, table in tables.items():
        st.subheader(f"{protocol.capitalize()} protocol")
        st.table(table.map(lambda v: f"{v:.4f}"))
    report = snap.root / "models" / mid / "report"
    plots = [p for p in (report / "metrics.png", report / "training.png") if p.is_file()]
    for column, plot in zip(st.columns(2), plots):
        column.image(str(plot), caption=f"{plot.stem} (report of {mid})")
    k = (snap.models[mid].manifest.get("config", {}).get("evaluate", {}).get("k", 10) if mid in snap.models else 10)
    over = views.quality_over_nights(snap, k)
    if len(over) > 1:
        st.subheader("Quality across nights")
        st.line_chart(over)
        st.table(over.map(lambda v: f"{v:.4f}"))


def main() -> None:
    st.set_page_config(page_title="DSER recommendations", layout="wide")
    args = arguments(sys.argv[1:])
    st.title("DSER recommendations")
    s = store(args.warehouse, args.reload_seconds)
    snap = s.current()
    if s.error:
        st.warning(s.error)
    if not snap.nights:
        st.error(snap.problem)
        return
    start_from_link(snap)
    if "link_problem" in st.session_state:
        st.warning(st.session_state.pop("link_problem"))
    dt = st.sidebar.selectbox("Night (dt)", list(reversed(snap.dts)), key="dt",
                              help="the published nights of the recommendations")
    user = choose_user(snap, dt)
    st.query_params.from_dict({k: v for k, v in (("user", st.session_state["user"]), ("dt", dt)) if v})
    if user is not None:
        user_page(snap, dt, user)
    model_section(snap, dt)
    st.sidebar.caption(f"Loaded {_dt.datetime.fromisoformat(snap.loaded_at):%Y-%m-%d %H:%M} UTC from {snap.root}")


main()
