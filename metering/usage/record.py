"""The usage record: what the gateway captures about every request it answered.

One `UsageRecord` per request id. It is written to the durable local log before the last byte
of the response leaves the gateway, then shipped to the `usage_events` table (owned by this
package). The request id is the idempotency key all the way down.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
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
    prompt_digest: str | None = None
    """Keyed digest of the prompt (`prompt_digest()`), so repeated prompts can be spotted
    without keeping their text."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


USAGE_COLUMNS: tuple[str, ...] = tuple(UsageRecord.__struct_fields__)


PROMPT_DIGEST_VERSION = "royalty-prompt/1"


def prompt_digest(prompt: object, key: bytes = b"") -> str:
    """Digest of a prompt for spotting repeats (`PROMPT_DIGEST_VERSION`): HMAC-SHA256 under
    `key` (every gateway of a deployment shares it) of the prompt's canonical JSON with its
    text lower-cased and its whitespace collapsed, so trivial variations repeat too. Without
    a key anyone could confirm a guessed prompt against a stored digest."""
    canonical = msgspec.json.encode(_normalise(prompt), order="sorted")
    mac = hmac.new(key or b"royalty", PROMPT_DIGEST_VERSION.encode() + b"\0", hashlib.sha256)
    mac.update(canonical)
    return mac.hexdigest()[:32]


def _normalise(value: object) -> object:
    if isinstance(value, str):
        return " ".join(value.lower().split())
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items() if v is not None}
    return value
