"""A request id on every response, errors and unknown routes included.

The id is made the first time anything asks for it (the route, or at the latest the response
start) and kept in the ASGI scope, so the usage record and the header always agree.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar.types import HTTPResponseStartEvent, Message, Scope

REQUEST_ID_KEY = "royalty.request_id"


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


def request_id_of(scope: Any) -> str:
    state = scope.setdefault("state", {})
    rid = state.get(REQUEST_ID_KEY)
    if rid is None:
        rid = state[REQUEST_ID_KEY] = new_request_id()
    return rid


def set_request_id_header(message: HTTPResponseStartEvent, scope: Scope) -> None:
    """Add `x-request-id` to an `http.response.start` message."""
    header = (b"x-request-id", request_id_of(scope).encode())
    headers: Any = message.setdefault("headers", [])
    if isinstance(headers, list):
        headers.append(header)
    else:
        message["headers"] = [*headers, header]


async def add_request_id(message: Message, scope: Scope) -> None:
    """Litestar `before_send` hook (the app uses `gateway.app.on_send`, which calls
    `set_request_id_header` itself)."""
    if message["type"] == "http.response.start":
        set_request_id_header(message, scope)
