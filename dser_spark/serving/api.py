"""The read-only HTTP API over the published tables (``dser-spark serve``: FastAPI on uvicorn).

``GET /users/{id}/recommendations?k=&dt=``, ``GET /users/{id}/history?limit=``,
``GET /items/{id}``, ``GET /health``; the OpenAPI schema at ``/openapi.json``.
Ids are the source's own: integers for MovieLens, strings (UUIDs, SKUs) or
integers for your own data, as the published tables carry them; an id that is
not one of the served type (``abc`` where ids are integers) is a 422.
Typed, bounded parameters give 422 for anything malformed; 404 for an unknown
user or item, 422 for a ``k`` above what is published or a ``dt`` that is not
published, 503 while there is nothing to serve. There are no write endpoints,
no SQL at request time (lookups in memory, see ``store``) and no path taken
from a request.
"""
from __future__ import annotations

import datetime as _dt
import logging
import pathlib
from typing import Annotated

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from dser_spark.serving import views
from dser_spark.serving.store import Store

log = logging.getLogger("dser_spark")

MAX_K = 1000        # no night publishes more; the published K is checked per night
MAX_HISTORY = 1000

ID_HELP = "the source's {} id: an integer (int64), or a string where the source's ids are strings"
UserId = Annotated[str, Path(min_length=1, max_length=views.MAX_ID_LENGTH, description=ID_HELP.format("user"))]
ItemId = Annotated[str, Path(min_length=1, max_length=views.MAX_ID_LENGTH, description=ID_HELP.format("item"))]
Id = int | str  # a source id in its own type (JSON number or string)


class Item(BaseModel):
    item_id: Id
    title: str | None
    year: int | None
    genres: list[str]


class Recommendation(Item):
    rank: int
    score: float
    source: str


class Recommendations(BaseModel):
    user_id: Id
    dt: str
    model_id: str
    items: list[Recommendation]


class Rating(Item):
    rating: float | None
    ts: str


class History(BaseModel):
    user_id: Id
    total: int
    items: list[Rating]


class ItemDetail(BaseModel, extra="allow"):
    item_id: Id
    title: str | None = None
    year: int | None = None
    genres: list[str] | None = None


class Health(BaseModel):
    status: str
    latest_dt: str | None = None
    dts: list[str] = []
    model_id: str | None = None
    k: int | None = None
    rows: dict[str, int] = {}
    loaded_at: str | None = None
    detail: str | None = None
    reload_error: str | None = None


def _error(status: int, detail) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def create_app(store: Store) -> FastAPI:
    """The API over ``store``'s snapshots (reloaded when a new night is published)."""
    app = FastAPI(title="dser-spark recommendations", version="1",
                  description="Read-only access to the nightly DSER recommendations published by `dser-spark "
                              "recommend`.")

    @app.exception_handler(views.NotFound)
    async def not_found(_: Request, exc: views.NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(views.BadParameter)
    async def bad_parameter(_: Request, exc: views.BadParameter) -> JSONResponse:
        return _error(422, [{"loc": [exc.location, exc.param], "msg": str(exc), "type": "value_error"}])

    @app.exception_handler(views.Unavailable)
    async def unavailable(_: Request, exc: views.Unavailable) -> JSONResponse:
        return _error(503, str(exc))

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations,
             responses={404: {"description": "unknown user"}, 503: {"description": "nothing published"}})
    async def user_recommendations(
            user_id: UserId,
            k: Annotated[int | None, Query(ge=1, le=MAX_K, description="list length (default: all published)")] = None,
            dt: Annotated[_dt.date | None, Query(description="published night (default: the latest)")] = None,
    ) -> dict:
        """The user's top-k recommendations on night ``dt``, rank first."""
        snap = store.current()
        return views.recommendations(snap, views.user_key(snap, user_id), dt.isoformat() if dt else None, k)

    @app.get("/users/{user_id}/history", response_model=History,
             responses={404: {"description": "unknown user"}, 503: {"description": "nothing published"}})
    async def user_history(user_id: UserId,
                           limit: Annotated[int, Query(ge=1, le=MAX_HISTORY, description="ratings to return")] = 20,
                           ) -> dict:
        """The user's most recent ratings, newest first, and how many there are in all."""
        snap = store.current()
        return views.history(snap, views.user_key(snap, user_id), limit)

    @app.get("/items/{item_id}", response_model=ItemDetail,
             responses={404: {"description": "unknown item"}, 503: {"description": "nothing published"}})
    async def get_item(item_id: ItemId) -> dict:
        """Every column of the item in the ``items`` table."""
        snap = store.current()
        return views.item(snap, views.item_key(snap, item_id))

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse | dict:
        """The latest published night, its model, row counts; 503 while nothing is published."""
        body = views.health(store.current(), store.error)
        return body if body["status"] == "ok" else JSONResponse(body, status_code=503)

    return app


def serve(root: pathlib.Path, host: str, port: int, reload_seconds: float) -> int:
    """Load the warehouse at ``root`` and serve the API until interrupted."""
    import uvicorn

    store = Store(root, reload_seconds)
    snap = store.current()
    if snap.problem:
        log.warning("serving: %s; /health answers 503 until a night is published", snap.problem)
    log.info("API on http://%s:%d (OpenAPI at /docs); warehouse %s", host, port, root)
    uvicorn.run(create_app(store), host=host, port=port, log_level="warning", access_log=False)
    return 0
