"""The errors a client receives, in OpenAI's shape (`{"error": {message, type, param,
code}}`), one class per HTTP status. Routes raise them directly; every other exception is
turned into one by `gateway.error_table`, the one table from domain errors to HTTP."""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class ApiError(Exception):
    """An error a client receives as `{"error": {message, type, param, code}}`."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return msgspec.json.encode(
            ErrorEnvelope(ErrorBody(self.message, self.type, self.param, self.code))
        )


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    code = "invalid_api_key"


class Forbidden(ApiError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")


class Conflict(ApiError):
    status = 409
    code = "conflict"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(ApiError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class PaymentRequired(ApiError):
    """The account's prepaid credit cannot cover the request's reservation (metering
    budgets). OpenAI reports exhausted quota with type and code `insufficient_quota`."""

    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(ApiError):
    status = 503
    type = "server_error"
    code = "engine_unavailable"


class InternalError(ApiError):
    status = 500
    type = "server_error"
    code = "internal_error"
