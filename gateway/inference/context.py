"""One request's state, from the route's call to its usage record (`CallContext`), what the
engine produced for it (`Output`), and what observers are handed once it is recorded
(`CompletedResponse`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import KeyInfo
from gateway.errors import ApiError
from metering.usage.record import Endpoint, UsageStatus
from serving.registry import Target

UNKNOWN_MODEL = "<unknown>"
"""What a usage record names when the request's model does not exist: the client's string
is not worth a row in the billing table's model index."""


@dataclass(frozen=True, slots=True)
class CompletedResponse:
    """An adapter's answered response, handed to the observers (gradient influence) after its
    usage record is durable. It holds the prompt and output text: an observer keeps them only
    as long as its work needs them."""

    request_id: str
    account_id: int
    adapter: str
    endpoint: Endpoint
    prompt: str | list[Any]
    """The completions prompt, or the chat messages as dicts (role, content, ...)."""
    output: str
    attribution: dict[str, Any] | None
    started_at: dt.datetime | None = None
    """When the request started: its usage event's time, so the month it is billed in."""


ResponseObserver = Callable[[CompletedResponse], None]
"""Called on the event loop after a response's usage record is written; must not block."""


@dataclass(slots=True)
class Output:
    """Accumulates what the engine produced, per choice index."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks: int = 0
    """Engine chunks that carried output: vLLM sends one per decoding step."""
    usage_seen: bool = False
    attribution: dict[str, Any] | None = None

    def add(self, index: int, text: str | None) -> None:
        if text:
            self.texts.setdefault(index, []).append(text)

    def text(self) -> str:
        """All choices' output, in choice order (what attribution traces)."""
        return "\n".join("".join(self.texts[i]) for i in sorted(self.texts))

    def digest(self) -> str:
        h = hashlib.sha256()
        for i in sorted(self.texts):
            h.update("".join(self.texts[i]).encode())
            h.update(b"\x1e")
        return h.hexdigest()


@dataclass(slots=True)
class CallContext:
    """One request in flight, in one value. The route creates it with who asks for what
    (`request_id`, `key`, `endpoint`); the service fills in the rest on the way, and its
    usage record is built from it alone (with the request)."""

    request_id: str
    key: KeyInfo
    endpoint: Endpoint
    started: float = field(default_factory=time.perf_counter)
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    first_token: float | None = None
    engine: str | None = None
    prompt_digest: str | None = None
    """Computed at admission: whatever could fail about the record fails before output."""
    target: Target | None = None
    """What the model name resolved to, once admitted. None while (or because) admission
    refused it: the record then names `UNKNOWN_MODEL`."""
    output: Output = field(default_factory=Output)
    status: UsageStatus = "error"
    """How the request ends, as its record will say (with `http_status`, `error_type`)."""
    http_status: int = 500
    error_type: str | None = None
    recorded: bool = False
    """The one usage record of the request has been handed to a writer: nothing else
    records it (whatever happens to the writer)."""

    def set_outcome(
        self, status: UsageStatus, http_status: int, error_type: str | None = None
    ) -> None:
        self.status, self.http_status, self.error_type = status, http_status, error_type

    def fail(self, err: ApiError) -> None:
        """The request ends with `err`: the record names its code (or its type)."""
        self.set_outcome("error", err.status, err.code or err.type)
