"""From the engine's stream chunks to the client's SSE frames.

The relay normalises each chunk for its endpoint, notes the output and the usage in the
request's `Output`, and holds back the engine's usage chunk: it goes out last, with the
response's attribution, just before `data: [DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from gateway.errors import ApiError
from gateway.inference.context import CallContext
from gateway.inference.endpoints import EndpointSpec, Request
from gateway.protocol.common import UsageMode

DONE = b"data: [DONE]\n\n"


def error_event(err: ApiError) -> bytes:
    """An error inside a stream that has started (its status line said 200 already)."""
    return b"data: " + err.body() + b"\n\n"


class ChunkRelay:
    """Turns engine stream chunks into the client's frames, noting usage and output."""

    def __init__(self, ctx: CallContext, req: Request, spec: EndpointSpec) -> None:
        self.ctx = ctx
        self.model = req.model
        self.out = ctx.output
        self.spec = spec
        opts = req.stream_options
        self.include_usage = bool(opts and opts.include_usage)
        self.continuous = bool(opts and opts.continuous_usage_stats)
        self.last_id = ""
        self.created = int(time.time())
        self.usage_doc: dict[str, Any] | None = None

    def last_frame(self, attribution: dict[str, Any] | None) -> bytes | None:
        """The final chunk: the held-back usage chunk (when the client asked for usage) with
        the attribution added, or a chunk with no choices carrying the attribution alone."""
        doc = self.usage_doc
        if doc is None:
            if attribution is None:
                return None
            doc = {"id": self.last_id, "object": self.spec.chunk_object,
                   "created": self.created, "model": self.model, "choices": []}  # fmt: skip
        if attribution is not None:
            doc["attribution"] = attribution
        return b"data: " + msgspec.json.encode(doc) + b"\n\n"

    def frame(self, payload: bytes) -> bytes | None:
        doc = msgspec.json.decode(payload)
        self.last_id = doc.get("id", self.last_id)
        self.created = doc.get("created", self.created)
        usage = doc.get("usage")
        if usage:
            self.out.usage_seen = True
            self.out.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.out.completion_tokens = int(usage.get("completion_tokens") or 0)
        choices = doc.get("choices") or ()
        if not choices:
            if self.include_usage:  # the final usage chunk: sent last, with the attribution
                self.usage_doc = self.spec.normalise_chunk(doc, self.model, usage="keep")
            return None
        for c in choices:
            piece = self.spec.delta_text(c)
            if piece:
                self.out.chunks += 1
                if self.ctx.first_token is None:
                    self.ctx.first_token = time.perf_counter()
            self.out.add(c.get("index", 0), piece)
        mode: UsageMode = "omit"
        if self.include_usage:
            mode = "keep" if self.continuous else "null"
        normalised = self.spec.normalise_chunk(doc, self.model, usage=mode)
        return b"data: " + msgspec.json.encode(normalised) + b"\n\n"


async def prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`first`, then the rest of the stream (nothing more after `[DONE]`)."""
    try:
        yield first
        if first is DONE:
            return
        async for frame in rest:
            yield frame
    finally:
        # Close the engine stream now (not whenever the collector runs), so an abandoned
        # request stops generating at once and its usage is recorded.
        await rest.aclose()  # type: ignore[attr-defined]
