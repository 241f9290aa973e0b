"""Usage capture: every request gets exactly one usage record, built from its `CallContext`,
and what depends on the record happens once it is written.

Fail closed:

- A non-streaming response is returned only once its record is durable; a record no store
  takes is not held (`hold=False`): the response is refused instead (503
  `usage_unavailable`), so it is not billed.
- A stream counts as answered (`ok`) only once its record is durable, written before
  `data: [DONE]`; if that fails after output went out, the stream ends with an error event
  instead and the record stays held by the sink, which retries it (billed when it lands).
- Writes run in their own tasks (`record` shields them): a client hanging up stops waiting,
  but the write, and what follows it, still happens exactly once.
- A stream the client abandons is recorded from a background task with the tokens
  generated so far: when the engine's usage chunk did not come, the engine's tokenizer
  counts the prompt and the output sent (chunks received are the fallback).
- After a write, whatever its fate: the key's tokens are debited, metrics observed and the
  budget reservation settled (off the response path); observers see only durable, answered
  adapter responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable

import msgspec

from gateway.inference.admission import KeyLimits
from gateway.inference.context import (
    UNKNOWN_MODEL,
    CallContext,
    CompletedResponse,
    Output,
    ResponseObserver,
)
from gateway.inference.endpoints import Request, request_prompt
from gateway.metrics import InferenceMetrics
from metering.budgets.gate import BudgetGate
from metering.usage.record import UsageRecord
from metering.usage.recorder import UsageNotRecorded, UsageSink
from serving.engine import EngineHTTPError, EngineUnavailable
from serving.pool import EngineHandle

log = logging.getLogger(__name__)

TokenCounter = tuple[EngineHandle, bytes]
"""An engine to count an abandoned stream's tokens with, and the body to count them in."""


class UsageCapture:
    def __init__(
        self,
        sink: UsageSink,
        limits: KeyLimits,
        metrics: InferenceMetrics,
        *,
        budget: BudgetGate | None = None,
        observers: tuple[ResponseObserver, ...] = (),
    ) -> None:
        self.sink = sink
        self.limits = limits
        self.metrics = metrics
        self.budget = budget
        """Prepaid credit: settled after each record (None: not enforced)."""
        self.observers = observers
        self._background: set[asyncio.Task[None]] = set()

    def health(self) -> str | None:
        """Why usage cannot be recorded right now, or None."""
        return self.sink.health()

    def usage_record(self, ctx: CallContext, req: Request) -> UsageRecord:
        out, target = ctx.output, ctx.target
        now = time.perf_counter()
        return UsageRecord(
            request_id=ctx.request_id,
            account_id=ctx.key.account_id,
            key_id=ctx.key.key_id,
            endpoint=ctx.endpoint,
            model=req.model if target is not None else UNKNOWN_MODEL,
            base_model=target.base.name if target else "",
            adapter=target.adapter.name if target and target.adapter else None,
            status=ctx.status,
            http_status=ctx.http_status,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            started_at=ctx.started_at,
            total_ms=(now - ctx.started) * 1000.0,
            ttft_ms=(ctx.first_token - ctx.started) * 1000.0 if ctx.first_token else None,
            output_sha256=out.digest() if out.texts else None,
            error_type=ctx.error_type,
            engine=ctx.engine,
            attribution=msgspec.json.encode(out.attribution).decode() if out.attribution else None,
            prompt_digest=ctx.prompt_digest,
        )

    async def record(self, ctx: CallContext, req: Request, *, hold: bool = True) -> None:
        """Record the request as it stands, now, in a task of its own: a cancelled caller (a
        client hanging up) stops waiting, but the write, and what follows it, still happens
        exactly once. Raises `UsageNotRecorded` when no store took it (held for retry by the
        sink with `hold`, unless it carries no money)."""
        rec = self.usage_record(ctx, req)
        ctx.recorded = True  # the write below owns the request's one record from here on
        task = asyncio.ensure_future(self._write(ctx, req, rec, hold=hold))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        try:
            await asyncio.shield(task)
        except (UsageNotRecorded, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("usage record %s could not be written", rec.request_id)
            raise UsageNotRecorded(rec.request_id) from None

    def record_later(self, ctx: CallContext, req: Request, counter: TokenCounter | None) -> None:
        """Record an abandoned or failed stream from a background task (its caller may be
        cancelled): first, with `counter`, count the tokens the engine's usage chunk did not
        report."""
        ctx.recorded = True
        self.spawn(self._count_then_record(ctx, req, counter))

    async def _count_then_record(
        self, ctx: CallContext, req: Request, counter: TokenCounter | None
    ) -> None:
        if counter is not None:
            await _count_tokens(*counter, ctx.output)
        rec = self.usage_record(ctx, req)
        with contextlib.suppress(UsageNotRecorded):  # held and retried by the sink
            await self._write(ctx, req, rec)

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for usage writes still in flight (shutdown)."""
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _write(
        self, ctx: CallContext, req: Request, rec: UsageRecord, *, hold: bool = True
    ) -> None:
        """Write the record, then what depends on it: rate-limit debit, metrics, observers
        (only once it is durable), and settling the budget reservation."""
        tokens = rec.prompt_tokens + rec.completion_tokens
        # A record that carries no money (an error without tokens) is not worth holding in
        # memory when nothing takes it: that would grow without bound during an outage.
        billable = rec.status != "error" or tokens > 0
        durable = False
        try:
            await self.sink.record(rec, hold=hold and billable)
            durable = True
        finally:
            if tokens:
                self.limits.debit(ctx.key, tokens)
            self.metrics.observe(rec)
            if self.budget is not None and self.budget.holds(rec.request_id):
                # Off the response path: until it lands the (larger) estimate stays held.
                self.spawn(
                    self.budget.settle(
                        rec.request_id, rec.base_model, rec.adapter or "", rec.started_at,
                        rec.prompt_tokens, rec.completion_tokens,
                        charged=rec.status != "error" and (durable or hold),
                    )
                )  # fmt: skip
        if self.observers and rec.status == "ok" and rec.adapter and ctx.output.texts:
            self._observe(rec, req, ctx.output)

    def _observe(self, rec: UsageRecord, req: Request, out: Output) -> None:
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


async def _count_tokens(handle: EngineHandle, body: bytes, out: Output) -> None:
    """A stream that ended before its usage chunk: ask the engine's tokenizer what the prompt
    and the output sent so far amount to (chunks received are the fallback)."""
    out.completion_tokens = out.chunks
    try:
        async with asyncio.timeout(5):
            out.prompt_tokens = await handle.client.count_tokens(body)
            text = "".join("".join(parts) for parts in out.texts.values())
            if text:
                out.completion_tokens = max(out.chunks, await handle.client.count_text(body, text))
    except (EngineUnavailable, EngineHTTPError, TimeoutError) as e:
        log.warning("could not count the tokens of an abandoned stream: %s", e)
