"""The usage record: what the gateway captures about every request it answered.

One `UsageRecord` per request id. It is written to the durable local log before the last byte
of the response leaves the gateway, then shipped to the `usage_events` table (owned by this
package). The request id is the idempotency key all the way down.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

UsageStatus = Literal["ok", "error", "client_cancelled"]
Endpoint = Literal["chat.completions", "completions"]


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    account_id: int
    key_id: int
    endpoint: Endpoint
    model: str
    """The model name the client asked for (a base model or an adapter)."""
    base_model: str
    adapter: str | None
    status: UsageStatus
    http_status: int
    prompt_tokens: int
    completion_tokens: int
    started_at: dt.datetime
    total_ms: float
    ttft_ms: float | None
    output_sha256: str | None
    """Hex SHA-256 of the output text; the text itself is not kept here."""
    error_type: str | None = None
    engine: str | None = None
    """Which engine replica served the request."""
    attribution: str | None = None
    """The response's `attribution` object as JSON (adapter requests): spans, weights."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


USAGE_COLUMNS: tuple[str, ...] = tuple(UsageRecord.__struct_fields__)
