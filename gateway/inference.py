"""Serving one OpenAI request: resolve the model, admit it, run it on an engine, normalise the
answer, and capture its usage durably before the last byte leaves.

Non-streaming responses are returned only after the usage record is durable; streams write it
before `data: [DONE]`. A stream the client abandons records the tokens generated so far.

Fail closed: admission refuses a request (503) while usage cannot be recorded
(`UsageSink.health`), and everything about the record that can fail (the prompt digest) is
computed at admission, before the engine is called. A stream counts as answered (`ok`) only
once its record is durable; if recording fails after output went out, the stream ends with an
error event instead of `[DONE]` and the record stays held by the sink, which retries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.auth import KeyInfo
from gateway.errors import (
    ApiError,
    BadRequest,
    ModelNotFound,
    PaymentRequired,
    RateLimited,
    ServiceUnavailable,
)
from gateway.metrics import InferenceMetrics
from gateway.protocol import chat, completions
from gateway.protocol.common import UsageMode
from gateway.ratelimit import Limiter, RateLimiter
from metering import metrics as metering_metrics
from metering.budgets.gate import BudgetGate, InsufficientCredit
from metering.usage.record import Endpoint, UsageRecord, UsageStatus, prompt_digest
from metering.usage.recorder import UsageNotRecorded, UsageSink, as_usage_sink
from serving.engine import EngineHTTPError, EngineUnavailable
from serving.placement import AdapterLoadFailed, AdapterSlotsBusy
from serving.pool import EngineHandle, EnginePool, NoEngineAvailable
from serving.registry import ModelRegistry, Target, UnknownModel

log = logging.getLogger(__name__)

Request = chat.ChatCompletionRequest | completions.CompletionRequest

UNKNOWN_MODEL = "<unknown>"
"""What a usage record names when the request's model does not exist: the client's string
is not worth a row in the billing table's model index."""

_PATHS: dict[Endpoint, str] = {
    "chat.completions": "/v1/chat/completions",
    "completions": "/v1/completions",
}
_DONE = b"data: [DONE]\n\n"


Attributor = Callable[[str, str], dict[str, Any] | None]
"""(adapter name, output text) -> the response's `attribution` object, or None."""


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


def request_prompt(req: Request) -> str | list[Any]:
    if isinstance(req, chat.ChatCompletionRequest):
        return [
            {k: v for k, v in msgspec.structs.asdict(m).items() if v is not None}
            for m in req.messages
        ]
    return req.prompt


@dataclass(slots=True)
class CallContext:
    request_id: str
    key: KeyInfo
    endpoint: Endpoint
    started: float = field(default_factory=time.perf_counter)
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    first_token: float | None = None
    engine: str | None = None
    prompt_digest: str | None = None
    """Computed at admission: whatever could fail about the record fails before output."""


@dataclass(slots=True)
class _Output:
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


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        pool: EnginePool,
        limiter: Limiter,
        record_usage: UsageSink | Callable[[UsageRecord], Awaitable[None]],
        *,
        default_rpm: int,
        default_tpm: int,
        attributor: Attributor | None = None,
        budget: BudgetGate | None = None,
        max_tokens_cap: int | None = None,
        observers: tuple[ResponseObserver, ...] = (),
        digest_key: bytes = b"",
    ) -> None:
        self.attributor = attributor
        self.observers = observers
        self.digest_key = digest_key
        self.max_tokens_cap = max_tokens_cap
        self.budget = budget
        """Prepaid credit: reserve before serving, settle after (None: not enforced)."""
        self.registry = registry
        self.pool = pool
        self.limiter = limiter
        self.usage: UsageSink = as_usage_sink(record_usage)
        self.default_rpm = default_rpm
        self.default_tpm = default_tpm
        self._background: set[asyncio.Task[None]] = set()
        self.failovers = 0
        """Requests retried on another engine after theirs failed before any output."""
        self.metrics = InferenceMetrics(registry)

    # --- admission ---------------------------------------------------------------------
    def _limits(self, key: KeyInfo) -> tuple[int, int]:
        return key.rpm_limit or self.default_rpm, key.tpm_limit or self.default_tpm

    async def admit(self, ctx: CallContext, req: Request) -> Target:
        unrecordable = self.usage.health()
        if unrecordable is not None:
            # Nothing is served that cannot be recorded.
            raise ServiceUnavailable(
                "Usage cannot be recorded right now, so requests are refused; please retry "
                "shortly.",
                code="usage_unavailable",
                headers={"Retry-After": "5"},
            )
        ctx.prompt_digest = self._prompt_digest(req)
        try:
            target = self.registry.resolve(req.model)
        except UnknownModel:
            raise ModelNotFound(req.model) from None
        self._check_token_budget(req)
        rpm, tpm = self._limits(ctx.key)
        wait = await self.limiter.acquire(ctx.key.key_id, rpm, tpm)
        if wait is not None:
            raise RateLimited(
                f"Rate limit reached for this key ({rpm} requests/min, {tpm} tokens/min). "
                f"Retry in {wait:.1f}s.",
                headers={"Retry-After": RateLimiter.retry_after_header(wait)},
            )
        if self.budget is not None:
            await self._reserve(ctx, req, target)
        return target

    def _prompt_digest(self, req: Request) -> str:
        try:
            return prompt_digest(request_prompt(req), self.digest_key)
        except RecursionError:  # decode caps nesting; this is the last line of defence
            raise BadRequest("The request is nested too deeply.", code="nesting_too_deep") from None

    def _check_token_budget(self, req: Request) -> None:
        # Before any reservation: an absurd max_tokens is a bad request, not a money problem.
        wanted = req.token_budget
        if self.max_tokens_cap is not None and wanted is not None and wanted > self.max_tokens_cap:
            param = (
                "max_completion_tokens"
                if getattr(req, "max_completion_tokens", None) is not None
                else "max_tokens"
            )
            raise BadRequest(
                f"'{param}' is {wanted}; this server generates at most {self.max_tokens_cap} "
                "tokens per request.",
                param=param,
            )

    async def _reserve(
        self, ctx: CallContext, req: Request, target: Target, body: bytes | None = None
    ) -> None:
        # Priced by the bytes of what the engine is sent (`body`, when the caller has built
        # it already): every prompt token is at least one byte of it, whatever the script,
        # and tools, tool calls, names and response_format are all in it. Tool schemas count
        # twice: chat templates re-render them with a space after every `,` and `:`.
        if body is None:
            body = self._engine_body(req, target, stream=False)
        tools = getattr(req, "tools", None)
        prompt_bytes = len(body) + (len(msgspec.json.encode(tools)) if tools else 0)
        adapter = target.adapter.name if target.adapter else ""
        try:
            await self.budget.reserve(  # type: ignore[union-attr]
                ctx.key.account_id, ctx.request_id, target.base.name, adapter,
                prompt_bytes, req.token_budget, req.n or 1,
            )  # fmt: skip
        except InsufficientCredit as e:
            raise PaymentRequired(
                f"Your account's credit does not cover this request: {e.available} micro-credits "
                f"available, up to {e.needed} needed. Add credit (royalty credits add) or "
                "lower max_tokens."
            ) from None

    def _engine_body(self, req: Request, target: Target, *, stream: bool) -> bytes:
        body: dict[str, Any] = msgspec.to_builtins(req)
        body["model"] = target.engine_model
        if stream:
            # Only the final usage chunk: per-chunk usage (`continuous_usage_stats`) costs vLLM
            # 12-15 % of its throughput; a cancelled stream is counted after the fact instead.
            body["stream"] = True
            opts = {"include_usage": True}
            if req.stream_options and req.stream_options.continuous_usage_stats:
                opts["continuous_usage_stats"] = True
            body["stream_options"] = opts
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return msgspec.json.encode(body)

    # --- non-streaming -----------------------------------------------------------------
    async def complete(self, ctx: CallContext, req: Request) -> bytes:
        out = _Output()
        status: UsageStatus = "error"
        http_status = 500
        target: Target | None = None
        error_type: str | None = None
        recorded = False
        try:
            target = await self.admit(ctx, req)
            body = self._engine_body(req, target, stream=False)
            raw = await self._call(ctx, target, body)
            doc = msgspec.json.decode(raw)
            normalise = (
                chat.normalise_response
                if ctx.endpoint == "chat.completions"
                else completions.normalise_response
            )
            doc = normalise(doc, req.model)
            for choice in doc.get("choices", ()):
                msg = choice.get("message")
                out.add(choice.get("index", 0), msg.get("content") if msg else choice.get("text"))
            usage = doc.get("usage") or {}
            out.prompt_tokens = int(usage.get("prompt_tokens", 0))
            out.completion_tokens = int(usage.get("completion_tokens", 0))
            ctx.first_token = time.perf_counter()
            if self._attribute(target, out):
                doc["attribution"] = out.attribution
            body = msgspec.json.encode(doc)
            rec = self._usage_record(ctx, req, target, out, "ok", 200, None)
            recorded = True  # the write below owns the request's one record from here on
            try:
                # Not held on failure: the response is refused instead, so it is not billed.
                await self._shielded_record(ctx, rec, req, out, hold=False)
            except UsageNotRecorded:
                raise _usage_unavailable() from None
            status, http_status = "ok", 200
            return body
        except ApiError as e:
            http_status, error_type = e.status, e.code or e.type
            raise
        finally:
            if not recorded:
                rec = self._usage_record(ctx, req, target, out, status, http_status, error_type)
                with contextlib.suppress(UsageNotRecorded):  # an error: nothing to bill
                    await self._shielded_record(ctx, rec, req, out)

    async def _call(self, ctx: CallContext, target: Target, body: bytes) -> bytes:
        path = _PATHS[ctx.endpoint]
        handle: EngineHandle | None = None
        failed: list[EngineHandle] = []
        for attempt in range(2):  # one retry, on another engine where the first one died
            try:
                handle = self.pool.pick(target, exclude=failed)
                async with self.pool.use(handle, target):
                    ctx.engine = handle.name
                    return await handle.client.post_json(path, body)
            except EngineHTTPError as e:
                if attempt == 0 and self._adapter_vanished(e, target, handle):
                    continue
                raise _engine_error(e) from None
            except EngineUnavailable as e:
                if attempt == 0 and handle is not None:
                    self._note_failover(ctx, handle, e)
                    failed.append(handle)
                    continue
                raise _unavailable(e) from None
            except (NoEngineAvailable, AdapterLoadFailed) as e:
                raise _unavailable(e) from None
        raise AssertionError("unreachable")

    def _note_failover(self, ctx: CallContext, handle: EngineHandle, e: Exception) -> None:
        # The usage record is written once, by the caller, after the last attempt.
        self.failovers += 1
        log.warning("request %s: engine %s failed (%s); retrying elsewhere",
                    ctx.request_id, handle.name, e)  # fmt: skip

    @staticmethod
    def _adapter_vanished(e: EngineHTTPError, target: Target, handle: EngineHandle | None) -> bool:
        # An engine restarted behind our back forgets runtime-loaded adapters: reload once.
        if e.status == 404 and target.adapter is not None and handle is not None:
            handle.placement.reset()
            return True
        return False

    # --- streaming ---------------------------------------------------------------------
    async def open_stream(self, ctx: CallContext, req: Request) -> AsyncIterator[bytes]:
        """Returns an iterator of SSE frames whose first frame is already fetched, so that
        errors before any output are raised here as HTTP errors, not inside a 200 stream."""
        try:
            target = await self.admit(ctx, req)
        except ApiError as e:
            rec = self._usage_record(ctx, req, None, _Output(), "error", e.status, e.code or e.type)
            with contextlib.suppress(UsageNotRecorded):  # an error: nothing to bill
                await self._shielded_record(ctx, rec, req, _Output())
            raise
        frames = self._frames(ctx, req, target)
        try:
            first = await anext(frames)
        except StopAsyncIteration:
            first = _DONE
        return _prepend(first, frames)

    async def _frames(self, ctx: CallContext, req: Request, target: Target) -> AsyncIterator[bytes]:
        out = _Output()
        status: UsageStatus = "client_cancelled"
        http_status = 200
        error_type: str | None = None
        recorded = False
        relay = _ChunkRelay(ctx, req, out)
        body = self._engine_body(req, target, stream=True)
        handle: EngineHandle | None = None
        failed: list[EngineHandle] = []
        sent = False
        try:
            for attempt in range(2):
                try:
                    handle = self.pool.pick(target, exclude=failed)
                    async with self.pool.use(handle, target):
                        ctx.engine = handle.name
                        stream = handle.client.stream(_PATHS[ctx.endpoint], body)
                        # aclosing: an abandoned stream must close the engine request now.
                        async with aclosing(stream) as chunks:  # type: ignore[type-var]
                            async for payload in chunks:
                                frame = relay.frame(payload)
                                if frame is not None:
                                    sent = True
                                    yield frame
                    break
                except EngineHTTPError as e:
                    if attempt == 0 and not out.texts and self._adapter_vanished(e, target, handle):
                        continue
                    raise _engine_error(e) from None
                except EngineUnavailable as e:
                    # Nothing reached the client yet: the request can start over elsewhere.
                    if attempt == 0 and not sent and handle is not None:
                        self._note_failover(ctx, handle, e)
                        failed.append(handle)
                        continue
                    raise
            self._attribute(target, out)
            rec = self._usage_record(ctx, req, target, out, "ok", http_status, None)
            recorded = True  # the write below owns the one record from here on
            try:
                # The output went out already: a record no store takes now is held and
                # retried by the sink (billed when it lands), never dropped.
                await self._shielded_record(ctx, rec, req, out)
            except UsageNotRecorded:
                yield b"data: " + _usage_unavailable().body() + b"\n\n"
                return
            last = relay.last_frame(out.attribution)  # usage and attribution, before [DONE]
            if last is not None:
                yield last
            yield _DONE
        except (EngineUnavailable, NoEngineAvailable, AdapterLoadFailed) as e:
            status, http_status, error_type = "error", 503, "engine_unavailable"
            if not sent:  # still before the status line: a plain 503
                raise _unavailable(e) from None
            # Output already went out under a 200: end the stream with an error event.
            err = _unavailable(e)
            yield b"data: " + err.body() + b"\n\n"
        except ApiError as e:
            status, http_status, error_type = "error", e.status, e.code or e.type
            raise
        finally:
            if not recorded:
                # Possibly cancelled: record from a separate task so cancellation of this one
                # cannot interrupt the write.
                record = self._record(ctx, req, target, out, status, http_status, error_type)
                if handle is not None and not out.usage_seen:
                    counter, count_body = handle, body
                    if not handle.healthy:  # it died: count with another engine of the base
                        counter = self._any_engine(target, handle)
                        count_body = self._engine_body(req, Target(target.base, None), stream=True)
                    record = self._count_then_record(counter, count_body, out, record)
                self._spawn(record)

    async def _count_then_record(
        self, handle: EngineHandle, body: bytes, out: _Output, record: Awaitable[None]
    ) -> None:
        """A stream that ended before its usage chunk: ask the engine's tokenizer what the
        prompt and the output sent so far amount to (chunks received are the fallback)."""
        out.completion_tokens = out.chunks
        try:
            async with asyncio.timeout(5):
                out.prompt_tokens = await handle.client.count_tokens(body)
                text = "".join("".join(parts) for parts in out.texts.values())
                if text:
                    out.completion_tokens = max(
                        out.chunks, await handle.client.count_text(body, text)
                    )
        except (EngineUnavailable, EngineHTTPError, TimeoutError) as e:
            log.warning("could not count the tokens of an abandoned stream: %s", e)
        await record

    def _any_engine(self, target: Target, dead: EngineHandle) -> EngineHandle:
        """An engine to count tokens with when the request's own engine died (the same base
        model, so the same tokenizer); the dead one if there is no other."""
        try:
            return self.pool.pick(Target(target.base, None), exclude=(dead,))
        except NoEngineAvailable:
            return dead

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for usage writes still in flight (shutdown)."""
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # --- attribution -------------------------------------------------------------------
    def _attribute(self, target: Target, out: _Output) -> bool:
        """Attribute the finished output of an adapter request (inline: spans + weights);
        a failure here never fails the response, it only leaves it unattributed."""
        if self.attributor is None or target.adapter is None:
            return False
        started = time.perf_counter()
        try:
            out.attribution = self.attributor(target.adapter.name, out.text())
            metering_metrics.attribution_observed("span", time.perf_counter() - started)
        except Exception:
            log.exception("attribution failed for adapter %s", target.adapter.name)
            out.attribution = None
        return out.attribution is not None

    # --- usage -------------------------------------------------------------------------
    def _observe(self, rec: UsageRecord, req: Request, out: _Output) -> None:
        done = CompletedResponse(
            request_id=rec.request_id,
            account_id=rec.account_id,
            adapter=rec.adapter or "",
            endpoint=rec.endpoint,
            prompt=request_prompt(req),
            output=out.text(),
            attribution=out.attribution,
            started_at=rec.started_at,
        )
        for observe in self.observers:
            try:
                observe(done)
            except Exception:  # an observer's failure never fails the response
                log.exception("response observer failed for %s", rec.request_id)

    def _usage_record(
        self,
        ctx: CallContext,
        req: Request,
        target: Target | None,
        out: _Output,
        status: UsageStatus,
        http_status: int,
        error_type: str | None,
    ) -> UsageRecord:
        now = time.perf_counter()
        return UsageRecord(
            request_id=ctx.request_id,
            account_id=ctx.key.account_id,
            key_id=ctx.key.key_id,
            endpoint=ctx.endpoint,
            model=req.model if target is not None else UNKNOWN_MODEL,
            base_model=target.base.name if target else "",
            adapter=target.adapter.name if target and target.adapter else None,
            status=status,
            http_status=http_status,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            started_at=ctx.started_at,
            total_ms=(now - ctx.started) * 1000.0,
            ttft_ms=(ctx.first_token - ctx.started) * 1000.0 if ctx.first_token else None,
            output_sha256=out.digest() if out.texts else None,
            error_type=error_type,
            engine=ctx.engine,
            attribution=msgspec.json.encode(out.attribution).decode() if out.attribution else None,
            prompt_digest=ctx.prompt_digest,
        )

    async def _record(
        self,
        ctx: CallContext,
        req: Request,
        target: Target | None,
        out: _Output,
        status: UsageStatus,
        http_status: int,
        error_type: str | None,
    ) -> None:
        """Build and write a record from a background task (abandoned streams)."""
        rec = self._usage_record(ctx, req, target, out, status, http_status, error_type)
        with contextlib.suppress(UsageNotRecorded):  # held and retried by the sink
            await self._write_usage(ctx, rec, req, out)

    async def _shielded_record(
        self, ctx: CallContext, rec: UsageRecord, req: Request, out: _Output, *, hold: bool = True
    ) -> None:
        """Write `rec` in its own task: a cancelled caller (a client hanging up) stops
        waiting, but the write, and what follows it, still happens exactly once."""
        task = asyncio.ensure_future(self._write_usage(ctx, rec, req, out, hold=hold))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        try:
            await asyncio.shield(task)
        except (UsageNotRecorded, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("usage record %s could not be written", rec.request_id)
            raise UsageNotRecorded(rec.request_id) from None

    async def _write_usage(
        self, ctx: CallContext, rec: UsageRecord, req: Request, out: _Output, *, hold: bool = True
    ) -> None:
        """Write the record, then what depends on it: rate-limit debit, metrics, observers
        (only once it is durable), and settling the budget reservation."""
        tokens = rec.prompt_tokens + rec.completion_tokens
        # A record that carries no money (an error without tokens) is not worth holding in
        # memory when nothing takes it: that would grow without bound during an outage.
        billable = rec.status != "error" or tokens > 0
        durable = False
        try:
            await self.usage.record(rec, hold=hold and billable)
            durable = True
        finally:
            if tokens:
                _, tpm = self._limits(ctx.key)
                self.limiter.debit_tokens(rec.key_id, tpm, tokens)
            self.metrics.observe(rec)
            if self.budget is not None and self.budget.holds(rec.request_id):
                # Off the response path: until it lands the (larger) estimate stays held.
                self._spawn(
                    self.budget.settle(
                        rec.request_id, rec.base_model, rec.adapter or "", rec.started_at,
                        rec.prompt_tokens, rec.completion_tokens,
                        charged=rec.status != "error" and (durable or hold),
                    )
                )  # fmt: skip
        if self.observers and rec.status == "ok" and rec.adapter and out.texts:
            self._observe(rec, req, out)


class _ChunkRelay:
    """Turns engine stream chunks into the client's frames, noting usage and output."""

    def __init__(self, ctx: CallContext, req: Request, out: _Output) -> None:
        self.ctx = ctx
        self.model = req.model
        self.out = out
        opts = req.stream_options
        self.include_usage = bool(opts and opts.include_usage)
        self.continuous = bool(opts and opts.continuous_usage_stats)
        self.normalise = (
            chat.normalise_chunk
            if ctx.endpoint == "chat.completions"
            else completions.normalise_chunk
        )
        self.object = (
            "chat.completion.chunk" if ctx.endpoint == "chat.completions" else "text_completion"
        )
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
            doc = {"id": self.last_id, "object": self.object, "created": self.created,
                   "model": self.model, "choices": []}  # fmt: skip
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
                self.usage_doc = self.normalise(doc, self.model, usage="keep")
            return None
        for c in choices:
            delta = c.get("delta")
            piece = delta.get("content") if delta else c.get("text")
            if piece:
                self.out.chunks += 1
                if self.ctx.first_token is None:
                    self.ctx.first_token = time.perf_counter()
            self.out.add(c.get("index", 0), piece)
        mode: UsageMode = "omit"
        if self.include_usage:
            mode = "keep" if self.continuous else "null"
        return (
            b"data: " + msgspec.json.encode(self.normalise(doc, self.model, usage=mode)) + b"\n\n"
        )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield first
        if first is _DONE:
            return
        async for frame in rest:
            yield frame
    finally:
        # Close the engine stream now (not whenever the collector runs), so an abandoned
        # request stops generating at once and its usage is recorded.
        await rest.aclose()  # type: ignore[attr-defined]


def _usage_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The response could not be recorded for billing, so it is not served; please retry "
        "shortly.",
        code="usage_unavailable",
        headers={"Retry-After": "5"},
    )


def _unavailable(e: Exception) -> ServiceUnavailable:
    if isinstance(e, AdapterSlotsBusy):  # nothing wrong: the engine is full for now
        log.warning("%s", e)
        return ServiceUnavailable(
            f"Every adapter slot of the engines serving `{e.adapter}` is busy; please retry "
            "shortly.",
            code="adapter_slots_busy",
            headers={"Retry-After": "5"},
        )
    if isinstance(e, AdapterLoadFailed):
        log.error("%s", e)
        return ServiceUnavailable(
            f"The model `{e.adapter}` could not be loaded on an engine; please retry later.",
            code="adapter_unavailable",
            headers={"Retry-After": "10"},
        )
    return ServiceUnavailable(
        "The model engine is unavailable right now; please retry shortly.",
        headers={"Retry-After": "2"},
    )


def _engine_error(e: EngineHTTPError) -> ApiError:
    if e.status in (400, 404, 413, 422):
        return BadRequest(e.message, code="invalid_request")
    return _unavailable(e)
