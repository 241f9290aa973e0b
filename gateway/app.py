"""`create_app()`: all HTTP wiring in one place."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.types import LifespanHook

from gateway.container import Services
from gateway.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from gateway.middleware import add_request_id
from gateway.routes.common import JSON, services_of
from gateway.routes.openai import ROUTES as OPENAI_ROUTES

log = logging.getLogger(__name__)


def _render(err: ApiError) -> Response[bytes]:
    return Response(err.body(), status_code=err.status, media_type=JSON, headers=err.headers)


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[bytes]:
    return _render(exc)


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    503: ServiceUnavailable,
}


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    cls = _BY_STATUS.get(exc.status_code)
    if cls is None:
        cls = BadRequest if exc.status_code < 500 else InternalError
    message = exc.detail or "Request failed."
    if exc.status_code == 404:
        message = f"Unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 413:
        message = "Request body is too large."
    err = cls(message)
    err.status = exc.status_code
    return _render(err)


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error", exc_info=exc)
    return _render(InternalError("The server had an error while processing your request."))


@get("/healthz", media_type=MediaType.JSON)
async def healthz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 once the gateway and at least one engine are ready (no key needed: probes)."""
    if services_of(request).pool.ready():
        return Response(b'{"status":"ok"}', media_type=JSON)
    return _render(ServiceUnavailable("No model engine is ready yet."))


def create_app(
    services: Services,
    *,
    on_startup: Sequence[LifespanHook] = (),
    on_shutdown: Sequence[LifespanHook] = (),
    extra_routes: Sequence[Callable[..., Any]] = (),
) -> Litestar:
    return Litestar(
        route_handlers=[healthz, *OPENAI_ROUTES, *extra_routes],
        before_send=[add_request_id],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        request_max_body_size=services.settings.max_body_bytes,
        state=State({"services": services}),
        on_startup=list(on_startup),
        on_shutdown=list(on_shutdown),
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
