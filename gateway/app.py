"""`create_app()`: all HTTP wiring in one place."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec
from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.types import LifespanHook, Message, Scope

from attribution import errors as domain
from gateway.container import Services
from gateway.dashboard import ROUTES as DASHBOARD_ROUTES
from gateway.error_table import api_error
from gateway.errors import ApiError, InternalError, ServiceUnavailable
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


def _render(
    err: ApiError, extra: dict[str, Any] | None = None, top: dict[str, Any] | None = None
) -> Response[bytes]:
    body = err.body()
    if extra or top:
        error = {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
        body = msgspec.json.encode({"error": {**error, **(extra or {})}, **(top or {})})
    return Response(body, status_code=err.status, media_type=JSON, headers=err.headers)


def _error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The app's one exception handler: an `ApiError` as it is, any other exception as the
    error table (`gateway.error_table`) says, else a logged 500. A rejected record carries
    its per-record answer (`result`, e.g. `duplicate_of`); an all-or-nothing bulk upload
    carries every line's answer (`data`)."""
    err = api_error(exc, request)
    if err is None:
        log.exception("unhandled error", exc_info=exc)
        err = InternalError("The server had an error while processing your request.")
    if isinstance(exc, domain.Rejected):
        return _render(err, extra={"result": result_json(exc.result)})
    if isinstance(exc, domain.BulkRejected):
        lines = cast("list[int] | None", request.scope.get(BULK_LINES_KEY))
        return _render(err, top={"data": bulk_results_json(exc.results, lines)})
    return _render(err)


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
        exception_handlers={Exception: _error_response},
        request_max_body_size=services.settings.max_body_bytes,
        state=State({"services": services}),
        on_startup=list(on_startup),
        on_shutdown=list(on_shutdown),
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
