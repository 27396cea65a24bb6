"""``create_app(settings)``: the Litestar application, wired from settings passed in.

Nothing here reads the environment: the entry points build :class:`server.settings.Settings` and pass it.
"""

from __future__ import annotations

import logging

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from server import __version__
from server.api.admin import AuditController, TokenController
from server.api.annotations import AnnotationController
from server.api.config import config
from server.api.deps import provide_call
from server.api.health import health
from server.api.mask_groups import MaskController, MaskGroupController
from server.api.openapi import document_errors
from server.api.review import ReviewController
from server.api.storage_routes import StorageUploads, get_object, put_object
from server.context import AppParts
from server.db.session import Database
from server.errors import ApiError, from_validation
from server.jobs.api import run_validation
from server.logs import RequestLogMiddleware
from server.metrics import Metrics, StatsRefresher, metrics_endpoint
from server.request import ApiRequest
from server.security import TokenAuthMiddleware, TokenCache
from server.settings import Settings
from server.storage import Storage, create_storage
from server.storage.signing_key import DEFAULT_PUBLIC_URL, load_signing_key

log = logging.getLogger("pacs_mask.server")


def _api_error(_request: Request, exc: ApiError) -> Response:
    return Response(exc.body(), status_code=exc.status_code)


def _validation_error(_request: Request, exc: ValidationException) -> Response:
    message = exc.detail or "The request is not valid."
    if "JSON" in message or "decode" in message.lower():
        details = {"errors": exc.extra} if exc.extra else {}
        body = {"error": "malformed_json", "message": f"The request body is not valid JSON: {message}"}
        return Response(body | {"details": details}, status_code=400)
    error = from_validation(exc.extra if isinstance(exc.extra, list) else [])
    return Response(error.body(), status_code=error.status_code)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "entity_too_large",
    415: "unsupported_media_type",
}


def _http_error(_request: Request, exc: HTTPException) -> Response:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        message = "There is no such route. See /schema for the API."
    elif exc.status_code == 405:
        message = "This route does not accept that method."
    elif exc.status_code == 400 and (
        isinstance(exc.__cause__, SerializationException) or "JSON" in (exc.detail or "")
    ):
        code, message = "malformed_json", f"The request body is not valid JSON: {exc.detail}"
    else:
        message = exc.detail
    return Response({"error": code, "message": message, "details": {}}, status_code=exc.status_code)


def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(
        {
            "error": "internal_error",
            "message": "The server hit an unexpected error; it has been logged. Please report it.",
            "details": {},
        },
        status_code=500,
    )


def create_app(
    settings: Settings, *, storage: Storage | None = None, public_url: str | None = None
) -> Litestar:
    """Build the application. ``storage`` lets tests inject a backend (e.g. one that fails on purpose)."""
    db = Database(settings.resolved_database_url)
    base_url = settings.public_url or public_url or DEFAULT_PUBLIC_URL
    if storage is None:
        storage = create_storage(settings, public_url=base_url, signing_key=load_signing_key(settings))
    parts = AppParts(
        settings=settings,
        db=db,
        storage=storage,
        metrics=Metrics(),
        tokens=TokenCache(settings.auth_cache_seconds),
    )

    refresher = StatsRefresher(parts, settings.metrics_refresh_seconds)

    def shutdown() -> None:
        parts.storage.close()
        parts.db.close()

    cors = (
        CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Content-MD5"],
            expose_headers=["ETag"],
            allow_credentials=False,
        )
        if settings.cors_origins
        else None
    )
    openapi = OpenAPIConfig(
        title="PACS Mask Upload API",
        version=__version__,
        path="/schema",
        render_plugins=[SwaggerRenderPlugin()],
        components=Components(security_schemes={"BearerToken": SecurityScheme(type="http", scheme="bearer")}),
        security=[{"BearerToken": []}],
    )
    app = Litestar(
        route_handlers=[
            AnnotationController,
            MaskGroupController,
            MaskController,
            ReviewController,
            AuditController,
            TokenController,
            health,
            config,
            put_object,
            get_object,
            metrics_endpoint,
            run_validation,
        ],
        dependencies={"call": Provide(provide_call, sync_to_thread=False)},
        middleware=[
            DefineMiddleware(TokenAuthMiddleware, exclude=[r"^/health$", r"^/storage/", r"^/schema"])
        ],
        exception_handlers={
            ApiError: _api_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        cors_config=cors,
        openapi_config=openapi,
        request_class=ApiRequest,
        on_startup=[refresher.start],
        on_shutdown=[refresher.stop, shutdown],
        logging_config=None,
    )
    document_errors(app)
    app.state.parts = parts
    # The request log is outermost, so routing, authentication and error responses are all timed and
    # logged; signed uploads to local storage are served just inside it (see StorageUploads).
    app.asgi_handler = RequestLogMiddleware(StorageUploads(app.asgi_handler, parts), parts.metrics)
    return app
