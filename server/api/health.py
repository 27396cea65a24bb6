"""``GET /health``: is the database reachable and the storage usable? No token needed."""

from __future__ import annotations

from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec

from server import __version__
from server.context import AppParts
from server.contract import messages
from server.storage.base import StorageError


@get(
    "/health",
    sync_to_thread=True,
    tags=["health"],
    summary="Database and storage health",
    responses={503: ResponseSpec(messages.Health, description="The database or the storage is unusable.")},
)
def health(request: Request) -> Response[messages.Health]:
    parts: AppParts = request.app.state.parts
    database = storage = "ok"
    try:
        parts.db.ping()
    except Exception as exc:  # any failure means unhealthy, said in the body
        database = f"error: {type(exc).__name__}"
    try:
        parts.storage.check()
    except StorageError as exc:
        storage = f"error: {exc}"
    ok = database == "ok" and storage == "ok"
    body = messages.Health(
        status="ok" if ok else "degraded", database=database, storage=storage, version=__version__
    )
    return Response(body, status_code=200 if ok else 503)
