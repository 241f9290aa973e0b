"""`create_app()`: all HTTP wiring in one place."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec
from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.types import LifespanHook, Message, Scope

from attribution import errors as domain
from attribution.service import RATE_WINDOW_S
from gateway.container import Services
from gateway.dashboard import ROUTES as DASHBOARD_ROUTES
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
from gateway.metrics import count_response_start, metrics_endpoint
from gateway.middleware import set_request_id_header
from gateway.routes.adapters import ROUTES as ADAPTER_ROUTES
from gateway.routes.attributions import ROUTES as ATTRIBUTION_ROUTES
from gateway.routes.common import JSON, services_of
from gateway.routes.datanets import BULK_LINES_KEY, bulk_results_json, result_json
from gateway.routes.datanets import ROUTES as DATANET_ROUTES
from gateway.routes.metering import ROUTES as METERING_ROUTES
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


def _domain_error(request: Request[Any, Any, Any], exc: domain.DatanetError) -> Response[bytes]:
    """Every `attribution.errors` exception, in OpenAI's error shape with its `status_code`.
    A rejected record names its rule as `code` and carries the per-record answer (`result`,
    e.g. `duplicate_of`); an all-or-nothing bulk upload carries every line's answer."""
    status = exc.status_code
    type_ = "invalid_request_error"
    code: str | None = None
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    top: dict[str, Any] = {}
    message = str(exc)
    if status == 403:
        type_, code = "permission_error", "forbidden"
    elif status == 404:
        code = "not_found"
    elif status == 409:
        code = "conflict"
    if isinstance(exc, domain.Rejected):
        r = exc.result
        code = r.reason
        message = f"Record rejected ({r.reason}): {r.detail}"
        extra["result"] = result_json(r)
        if isinstance(exc, domain.RateLimited):
            type_ = "rate_limit_error"
            headers["Retry-After"] = str(int(RATE_WINDOW_S))
    elif isinstance(exc, domain.BulkRejected):
        code = "bulk_rejected"
        lines = cast("list[int] | None", request.scope.get(BULK_LINES_KEY))
        top["data"] = bulk_results_json(exc.results, lines)
    body = {
        "error": {"message": message, "type": type_, "param": None, "code": code, **extra},
        **top,
    }
    return Response(msgspec.json.encode(body), status_code=status, media_type=JSON, headers=headers)


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error", exc_info=exc)
    return _render(InternalError("The server had an error while processing your request."))


async def on_send(message: Message, scope: Scope) -> None:
    """The app's one `before_send` hook: the request id header and the response count, on
    a response's start. One hook, not two: Litestar awaits every hook for every message, and
    a stream sends one message per chunk."""
    if message["type"] == "http.response.start":
        set_request_id_header(message, scope)
        count_response_start(message, scope)


@get("/healthz", media_type=MediaType.JSON)
async def healthz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 once the gateway and at least one engine are ready and usage can be recorded (no
    key needed: probes). A 503 names what is missing, so a load balancer drains a gateway
    whose usage log's disk is full instead of sending it requests it must refuse."""
    services = services_of(request)
    unrecordable = services.inference.usage.health()
    if unrecordable is not None:
        return _render(
            ServiceUnavailable(
                f"Usage cannot be recorded: {unrecordable}.", code="usage_unavailable"
            )
        )
    if services.pool.ready():
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
        route_handlers=[
            healthz,
            metrics_endpoint,
            *DASHBOARD_ROUTES,
            *OPENAI_ROUTES,
            *DATANET_ROUTES,
            *METERING_ROUTES,
            *ADAPTER_ROUTES,
            *ATTRIBUTION_ROUTES,
            *extra_routes,
        ],
        before_send=[on_send],
        exception_handlers={
            ApiError: _api_error,
            domain.DatanetError: _domain_error,
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
