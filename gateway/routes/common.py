"""What every route shares: the service container, body reading, and scope checks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from litestar import Request
from litestar.exceptions import ClientException

from gateway.auth import KeyInfo, KeyStoreUnavailable
from gateway.errors import Forbidden, PayloadTooLarge, ServiceUnavailable, Unauthorized

if TYPE_CHECKING:
    from gateway.container import Services

JSON = "application/json"


def services_of(request: Request) -> Services:
    return request.app.state["services"]


async def authorize(request: Request, scope: str) -> KeyInfo:
    """Authenticate the bearer key and require `scope`; every route calls this first."""
    header = _authorization(request.scope["headers"])
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    try:
        info = await services_of(request).auth.authenticate(token.strip())
    except KeyStoreUnavailable:
        raise ServiceUnavailable(
            "API keys cannot be checked right now; please retry shortly.",
            code="auth_unavailable",
            headers={"Retry-After": "2"},
        ) from None
    if info is None:
        raise Unauthorized("Incorrect API key provided.")
    if not info.allows(scope):
        raise Forbidden(f"This API key lacks the '{scope}' scope required for this route.")
    request.scope["royalty.key"] = info  # type: ignore[typeddict-unknown-key]
    return info


def _authorization(raw_headers: Iterable[tuple[bytes, bytes]]) -> str:
    # Straight from the ASGI scope: building Litestar's Headers object costs more than the
    # rest of authentication together.
    for name, value in raw_headers:
        if name == b"authorization" or (len(name) == 13 and name.lower() == b"authorization"):
            return value.decode("latin-1")
    return ""


async def read_body(request: Request) -> bytes:
    try:
        return await request.body()
    except ClientException as e:
        if e.status_code == 413:
            limit = services_of(request).settings.max_body_bytes
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.") from None
        raise
