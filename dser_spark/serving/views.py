"""What the pages and the endpoints show, as plain functions of a ``Snapshot`` (tested without a browser).

Every lookup is a binary search over sorted keys and a slice (see ``store``).
Ids are the source's own: integers, or strings (UUIDs, SKUs) for your own
data; ``user_key`` / ``item_key`` read a requested id as the snapshot keys it.
Errors say what is wrong in words a person can act on: ``NotFound`` (an
unknown user or item: HTTP 404), ``BadParameter`` (a parameter out of range
or a ``dt`` that is not published: 422), ``Unavailable`` (nothing to serve:
503).
"""
from __future__ import annotations

import datetime as _dt
import re

import numpy as np
import pandas as pd

from dser_spark.report import metric_table
from dser_spark.serving.store import INT64, Key, Night, Snapshot

MAX_ID_LENGTH = 256  # the longest string id a request may carry


class NotFound(LookupError):
    """An unknown user or item."""


class BadParameter(ValueError):
    """A request parameter that cannot be served; ``param`` names it."""

    def __init__(self, param: str, message: str, location: str = "query"):
        super().__init__(message)
        self.param, self.location = param, location


class Unavailable(RuntimeError):
    """Nothing to serve: no warehouse, nothing published yet."""


def _key(text: str, strings: bool, what: str) -> Key:
    """``text`` as an id: itself for string ids; else a decimal int64 in ASCII digits (``BadParameter`` if not)."""
    if strings:
        if not text or len(text) > MAX_ID_LENGTH:
            raise BadParameter(f"{what}_id", f"{what} ids are 1 to {MAX_ID_LENGTH} characters", "path")
        return text
    if not re.fullmatch(r"-?[0-9]{1,19}", text) or not INT64[0] <= int(text) <= INT64[1]:
        raise BadParameter(f"{what}_id", f"{what} ids are integers, not {text!r}", "path")
    return int(text)


def user_key(snap: Snapshot, text: str) -> Key:
    """A requested user id as the snapshot keys it."""
    return _key(text, snap.string_users, "user")


def item_key(snap: Snapshot, text: str) -> Key:
    """A requested item id as the snapshot keys it."""
    return _key(text, snap.string_items, "item")


def served(snap: Snapshot) -> Snapshot:
    """``snap`` if it has published nights to serve; else ``Unavailable`` with the reason."""
    if not snap.nights:
        raise Unavailable(snap.problem or "nothing published")
    return snap


def night(snap: Snapshot, dt: str | None = None) -> Night:
    """The published night ``dt`` (the latest when None)."""
    served(snap)
    if dt is None:
        return snap.nights[snap.latest]
    if dt not in snap.nights:
        raise BadParameter("dt", f"dt={dt} is not published (published: {', '.join(snap.dts)})")
    return snap.nights[dt]


def previous_dt(snap: Snapshot, dt: str) -> str | None:
    """The published night before ``dt``."""
    earlier = [d for d in snap.dts if d < dt]
    return earlier[-1] if earlier else None


def item_summary(snap: Snapshot, item_id: Key) -> dict:
    """Title, year and genres of an item (None where the items table has nothing)."""
    info = snap.items.get(item_id, {})
    return {"item_id": item_id, "title": info.get("title"), "year": info.get("year"),
            "genres": list(info.get("genres") or [])}


def _user_rows(n: Night, user_id: Key) -> slice:
    rows = n.users.rows(user_id)
    if rows is None:
        raise NotFound(f"user {user_id} has no recommendations in dt={n.dt}")
    return rows


def recommendations(snap: Snapshot, user_id: Key, dt: str | None = None, k: int | None = None) -> dict:
    """The top-``k`` list of ``user_id`` on night ``dt`` (all that is published when ``k`` is None)."""
    n = night(snap, dt)
    if k is not None and not 1 <= k <= n.k:
        raise BadParameter("k", f"k must be between 1 and {n.k}, the recommendations published for dt={n.dt}")
    rows = _user_rows(n, user_id)
    rows = slice(rows.start, min(rows.stop, rows.start + (k or n.k)))
    items = [{"rank": int(r), **item_summary(snap, i), "score": float(s), "source": n.sources[c]}
             for r, i, s, c in zip(n.rank[rows], n.item_id[rows].tolist(), n.score[rows], n.source[rows])]
    models = ", ".join(n.model_ids)
    return {"user_id": user_id, "dt": n.dt, "model_id": models, "items": items}


def history(snap: Snapshot, user_id: Key, limit: int = 5) -> dict:
    """The ``limit`` most recent ratings of ``user_id``, newest first, and how many there are."""
    h = served(snap).history
    rows = h.users.rows(user_id) if h is not None else None
    if rows is None:
        raise NotFound(f"user {user_id} has no interactions")
    total = rows.stop - rows.start
    rows = slice(rows.start, min(rows.stop, rows.start + limit))
    items = [{**item_summary(snap, i), "rating": None if np.isnan(r) else float(r),
              "ts": _dt.datetime.fromtimestamp(t / 1000, _dt.timezone.utc).isoformat()}
             for i, r, t in zip(h.item_id[rows].tolist(), h.rating[rows], h.ts[rows])]
    return {"user_id": user_id, "total": total, "items": items}


def item(snap: Snapshot, item_id: Key) -> dict:
    """Every column of an item."""
    if item_id not in served(snap).items:
        raise NotFound(f"item {item_id} is not in the items table")
    return {k: list(v) if isinstance(v, (list, tuple, np.ndarray)) else v for k, v in snap.items[item_id].items()}


def changes(snap: Snapshot, user_id: Key, dt: str | None = None) -> dict:
    """What entered and what left ``user_id``'s list on ``dt`` compared with the night before."""
    n = night(snap, dt)
    now = n.item_id[_user_rows(n, user_id)].tolist()
    before_dt = previous_dt(snap, n.dt)
    before: list[Key] = []
    if before_dt is not None:
        rows = snap.nights[before_dt].users.rows(user_id)
        before = snap.nights[before_dt].item_id[rows].tolist() if rows is not None else []
    return {"dt": n.dt, "previous_dt": before_dt,
            "entered": [item_summary(snap, i) for i in now if i not in before] if before_dt else [],
            "left": [item_summary(snap, i) for i in before if i not in now]}


def search_users(snap: Snapshot, dt: str | None, text: str, limit: int = 20) -> tuple[list[Key], int]:
    """Users of night ``dt`` whose id starts with ``text``: the first ``limit`` in order, and how many there
    are. String ids starting with ``text`` are one range of the sorted ids; integer ids one range per
    candidate length of id; so this never scans them."""
    users = night(snap, dt).users.keys
    text = text.strip()
    if not text:
        return users[:limit].tolist(), len(users)
    if snap.string_users:
        lo, hi = np.searchsorted(users, [text, text + "\U0010ffff"])
        return users[lo:min(hi, lo + limit)].tolist(), int(hi - lo)
    if not re.fullmatch(r"-?[0-9]{1,19}", text):
        raise BadParameter("user_id", f"user ids are integers, not {text!r}")
    value = int(text)
    if text.startswith(("-", "0")):  # only an exact match: no other decimal id starts with these
        return ([value], 1) if night(snap, dt).users.rows(value) is not None else ([], 0)
    found, total, scale = [], 0, 1
    while len(users) and value * scale <= int(users[-1]):
        lo, hi = np.searchsorted(users, [value * scale, min((value + 1) * scale, INT64[1])])
        total += int(hi - lo)
        found += users[lo:min(hi, lo + limit - len(found))].tolist()
        scale *= 10
    return found, total


def health(snap: Snapshot, error: str | None = None) -> dict:
    """What is served: the latest night, its model and row counts (``status`` ok or unavailable)."""
    if not snap.nights:
        return {"status": "unavailable", "detail": snap.problem, "reload_error": error}
    latest = snap.nights[snap.latest]
    return {"status": "ok", "latest_dt": latest.dt, "dts": snap.dts, "model_id": ", ".join(latest.model_ids),
            "k": latest.k, "rows": {"recommendations": latest.users.total, "users": len(latest.users.keys),
                                    "items": len(snap.items),
                                    "interactions": snap.history.users.total if snap.history is not None else 0},
            "loaded_at": snap.loaded_at, "reload_error": error}


def latest_metrics(snap: Snapshot) -> tuple[str | None, str | None, dict[str, pd.DataFrame]]:
    """The newest night's evaluation: (dt, model id, protocol -> model x metric@k table); of that night's
    models the one serving the latest published night when it was evaluated."""
    m = snap.metrics
    if m.empty:
        return None, None, {}
    dt = m["dt"].max()
    rows = m[m["dt"] == dt]
    serving = [mid for mid in rows["model_id"].unique() if snap.nights and mid in snap.nights[snap.latest].model_ids]
    mid = serving[0] if serving else rows["model_id"].iloc[-1]
    rows = rows[rows["model_id"] == mid]
    return dt, mid, {p: metric_table(rows, p) for p in ("sampled", "full") if (rows["protocol"] == p).any()}


def quality_over_nights(snap: Snapshot, k: int) -> pd.DataFrame:
    """One row per night, a column per model's sampled HR@k and NDCG@k (as the ``metrics_history`` view)."""
    m = snap.metrics
    if m.empty:
        return pd.DataFrame()
    rows = m[(m["protocol"] == "sampled") & (m["k"] == k) & m["metric"].isin(["HR", "NDCG"])]
    rows = rows.assign(column=rows["model"] + " " + rows["metric"] + f"@{k}")
    return rows.pivot_table(index="dt", columns="column", values="value", aggfunc="max").sort_index()
