"""The one table from exceptions to what a client receives: one exception tree, translated at
one boundary.

Packages raise their own exceptions, each of a kind of `core.errors` (`NotFound`, `Invalid`,
`Unavailable`...); Litestar raises `HTTPException`s. `ERROR_TABLE` says, for each kind and for
the few classes that need more (a message naming the model, a `Retry-After`, a status that
depends on the case), which HTTP status, OpenAI error `type`, `code` and message the client
gets. The first row that matches wins, so a class's row comes before its kind's.

`api_error` applies the table. The app's exception handler uses it for whatever reaches it;
the inference service uses it where the answer must be known before the boundary (a usage
record's status, an error event inside a stream that has started). An exception the table
does not know is an internal error (500), logged with its traceback by the handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar.exceptions import HTTPException

from attribution import errors as datanet
from attribution.service import RATE_WINDOW_S
from core import errors as kinds
from gateway import errors as http
from metering.budgets.store import InsufficientCredit
from metering.usage.recorder import UsageNotRecorded
from serving.engine import EngineHTTPError, EngineUnavailable
from serving.placement import AdapterLoadFailed, AdapterSlotsBusy
from serving.pool import NoEngineAvailable
from serving.registry import UnknownModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """How one class of exception reaches a client. `message` and `code` are `str.format`
    templates over the exception `e` (and `request`, in the rows for Litestar's own errors,
    which only the app's handler sees)."""

    catches: type[BaseException] | tuple[type[BaseException], ...]
    status: int | None
    """None: the exception's own `status_code` (Litestar's)."""
    type: str = "invalid_request_error"
    code: str | None = None
    message: str = "{e}"
    retry_after: int | None = None
    param: str | None = None
    when: Callable[[Any], bool] | None = None
    """Only for the exceptions this holds for; others go on to the next row."""
    log_level: int | None = None
    """Log the exception's text at this level when it is mapped (operators should know)."""


def _status(code: int) -> Callable[[HTTPException], bool]:
    return lambda e: e.status_code == code


_ENGINE_DOWN = "The model engine is unavailable right now; please retry shortly."
_REJECTED = "Record rejected ({e.result.reason}): {e.result.detail}"
_REASON = "{e.result.reason}"
"""A rejected record's code is the rule that rejected it."""

ERROR_TABLE: tuple[ErrorRule, ...] = (
    # --- serving: models and engines ----------------------------------------------------------
    ErrorRule(UnknownModel, 404, code="model_not_found", param="model",
              message="The model `{e.args[0]}` does not exist."),
    # Nothing is wrong when every slot is busy: the engines are full for now.
    ErrorRule(AdapterSlotsBusy, 503, "server_error", "adapter_slots_busy", retry_after=5,
              message="Every adapter slot of the engines serving `{e.adapter}` is busy; please "
              "retry shortly.", log_level=logging.WARNING),
    ErrorRule(AdapterLoadFailed, 503, "server_error", "adapter_unavailable", retry_after=10,
              message="The model `{e.adapter}` could not be loaded on an engine; please retry "
              "later.", log_level=logging.ERROR),
    # The engine refused the request itself (a prompt past the context, a bad parameter).
    ErrorRule(EngineHTTPError, 400, code="invalid_request", message="{e.message}",
              when=lambda e: e.status in (400, 404, 413, 422)),
    ErrorRule((EngineUnavailable, EngineHTTPError, NoEngineAvailable), 503, "server_error",
              "engine_unavailable", _ENGINE_DOWN, retry_after=2),
    # --- metering: usage and credit -------------------------------------------------------------
    ErrorRule(UsageNotRecorded, 503, "server_error", "usage_unavailable", retry_after=5,
              message="The response could not be recorded for billing, so it is not served; "
              "please retry shortly."),
    # OpenAI reports exhausted quota with type and code `insufficient_quota`.
    ErrorRule(InsufficientCredit, 402, "insufficient_quota", "insufficient_quota",
              message="Your account's credit does not cover this request: {e.available} "
              "micro-credits available, up to {e.needed} needed. Add credit (royalty credits "
              "add) or lower max_tokens."),
    # --- attribution: a rejected record (the handler adds its per-record answer) -------------
    ErrorRule(datanet.RateLimited, 429, "rate_limit_error", _REASON, _REJECTED,
              retry_after=int(RATE_WINDOW_S)),
    ErrorRule(datanet.RecordRejected, 413, code=_REASON, message=_REJECTED,
              when=lambda e: e.result.reason == "too_large"),
    ErrorRule(datanet.DuplicateRecord, 409, code=_REASON, message=_REJECTED),
    ErrorRule(datanet.Rejected, 400, code=_REASON, message=_REJECTED),
    ErrorRule(datanet.BulkRejected, 400, code="bulk_rejected"),
    # --- the kinds ------------------------------------------------------------------------------
    ErrorRule(kinds.Invalid, 400),
    ErrorRule(kinds.NotFound, 404, code="not_found"),
    ErrorRule(kinds.Forbidden, 403, "permission_error", "forbidden"),
    ErrorRule(kinds.Conflict, 409, code="conflict"),
    ErrorRule(kinds.RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorRule(kinds.QuotaExceeded, 402, "insufficient_quota", "insufficient_quota"),
    ErrorRule(kinds.Unavailable, 503, "server_error", "service_unavailable", retry_after=5,
              message="The service is unavailable right now; please retry shortly."),
    ErrorRule(kinds.DomainError, 400),
    # --- Litestar's own (routing, body size, decoding), by their status ------------------------
    ErrorRule(HTTPException, 400, message="{e.detail}", when=_status(400)),
    ErrorRule(HTTPException, 401, code="invalid_api_key", message="{e.detail}",
              when=_status(401)),
    ErrorRule(HTTPException, 404, code="not_found", when=_status(404),
              message="Unknown route: {request.method} {request.url.path}"),
    ErrorRule(HTTPException, 405, code="method_not_allowed", message="{e.detail}",
              when=_status(405)),
    ErrorRule(HTTPException, 413, code="request_too_large", when=_status(413),
              message="Request body is too large."),
    ErrorRule(HTTPException, 415, code="unsupported_media_type", message="{e.detail}",
              when=_status(415)),
    ErrorRule(HTTPException, 503, "server_error", "engine_unavailable", "{e.detail}",
              when=_status(503)),
    ErrorRule(HTTPException, None, message="{e.detail}", when=lambda e: e.status_code < 500),
    ErrorRule(HTTPException, None, "server_error", "internal_error", "{e.detail}"),
)  # fmt: skip

_CLASS_BY_STATUS: dict[int, type[http.ApiError]] = {
    cls.status: cls
    for cls in (
        http.BadRequest,
        http.Unauthorized,
        http.PaymentRequired,
        http.Forbidden,
        http.NotFound,
        http.Conflict,
        http.MethodNotAllowed,
        http.PayloadTooLarge,
        http.UnsupportedMediaType,
        http.RateLimited,
        http.InternalError,
        http.ServiceUnavailable,
    )
}
"""The `ApiError` class an answer is raised as (so `except ServiceUnavailable` works); its
type and code are the row's."""


def rule_for(exc: BaseException) -> ErrorRule | None:
    for rule in ERROR_TABLE:
        if isinstance(exc, rule.catches) and (rule.when is None or rule.when(exc)):
            return rule
    return None


def api_error(exc: BaseException, request: Any = None) -> http.ApiError | None:
    """What the client receives for `exc`: itself if it is an `ApiError`, else the table's
    answer, or None when the table does not know it (an internal error)."""
    if isinstance(exc, http.ApiError):
        return exc
    rule = rule_for(exc)
    if rule is None:
        return None
    if rule.log_level is not None:
        log.log(rule.log_level, "%s", exc)
    status = rule.status if rule.status is not None else int(getattr(exc, "status_code", 500))
    headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else None
    cls = _CLASS_BY_STATUS.get(status, http.ApiError)
    err = cls(rule.message.format(e=exc, request=request), param=rule.param, headers=headers)
    err.status = status
    err.type = rule.type
    err.code = rule.code.format(e=exc) if rule.code is not None else None
    return err


def as_api_error(exc: kinds.DomainError) -> http.ApiError:
    """`api_error` for a domain error, which the table always knows (its last rows are the
    kinds)."""
    err = api_error(exc)
    assert err is not None, exc
    return err
