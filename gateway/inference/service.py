"""`InferenceService`: one OpenAI request, from admission to its usage record.

    admit (`admission`) -> run on an engine (`serving.failover`) -> normalise (`endpoints`,
    `relay` for streams) -> attribute -> record (`recording`) -> answer

The request's state travels in its `CallContext`; which endpoint it is only matters to its
`EndpointSpec`. Errors: admission refuses with `ApiError`s; serving's exceptions come out of
the failover as they are and are turned into what the client receives by the gateway's error
table (`gateway.error_table`), here, because the usage record and a started stream need the
answer before the app's handler would see it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from typing import Any

import msgspec

from core.errors import DomainError
from gateway.error_table import as_api_error
from gateway.errors import ApiError
from gateway.inference.admission import Admission, KeyLimits
from gateway.inference.context import CallContext, ResponseObserver
from gateway.inference.endpoints import ENDPOINTS, EndpointSpec, Request, engine_body
from gateway.inference.recording import TokenCounter, UsageCapture
from gateway.inference.relay import DONE, ChunkRelay, error_event, prepend
from gateway.metrics import InferenceMetrics
from gateway.ratelimit import Limiter
from metering import metrics as metering_metrics
from metering.budgets.gate import BudgetGate
from metering.usage.record import UsageRecord
from metering.usage.recorder import UsageNotRecorded, UsageSink, as_usage_sink
from serving.engine import EngineUnavailable
from serving.failover import Failover
from serving.pool import EngineHandle, EnginePool
from serving.registry import ModelRegistry, Target

log = logging.getLogger(__name__)

Attributor = Callable[[str, str], dict[str, Any] | None]
"""(adapter name, output text) -> the response's `attribution` object, or None."""


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
        self.registry = registry
        self.pool = pool
        self.attributor = attributor
        self.failovers = 0
        """Requests retried on another engine after theirs failed before any output."""
        self.metrics = InferenceMetrics(registry)
        limits = KeyLimits(limiter, default_rpm, default_tpm)
        self.capture = UsageCapture(
            as_usage_sink(record_usage), limits, self.metrics, budget=budget, observers=observers
        )
        self.admission = Admission(
            registry, limits, self.capture.health,
            budget=budget, max_tokens_cap=max_tokens_cap, digest_key=digest_key,
        )  # fmt: skip

    # --- wiring that tests and the runtime set after construction ------------------------
    @property
    def usage(self) -> UsageSink:
        return self.capture.sink

    @usage.setter
    def usage(self, sink: UsageSink) -> None:
        self.capture.sink = sink

    @property
    def budget(self) -> BudgetGate | None:
        """Prepaid credit: reserved at admission, settled after the record (None: not
        enforced)."""
        return self.admission.budget

    @budget.setter
    def budget(self, gate: BudgetGate | None) -> None:
        self.admission.budget = self.capture.budget = gate

    @property
    def observers(self) -> tuple[ResponseObserver, ...]:
        return self.capture.observers

    @observers.setter
    def observers(self, observers: tuple[ResponseObserver, ...]) -> None:
        self.capture.observers = observers

    @property
    def max_tokens_cap(self) -> int | None:
        return self.admission.max_tokens_cap

    @max_tokens_cap.setter
    def max_tokens_cap(self, cap: int | None) -> None:
        self.admission.max_tokens_cap = cap

    async def drain(self) -> None:
        """Wait for usage writes still in flight (shutdown)."""
        await self.capture.drain()

    # --- non-streaming -------------------------------------------------------------------
    async def complete(self, ctx: CallContext, req: Request) -> bytes:
        spec = ENDPOINTS[ctx.endpoint]
        out = ctx.output
        try:
            ctx.target = target = await self.admission.admit(ctx, req)
            body = engine_body(req, target, stream=False)
            raw = await self._failover(ctx, target).call(
                lambda handle: self._post(ctx, handle, spec.path, body)
            )
            doc = spec.normalise_response(msgspec.json.decode(raw), req.model)
            for choice in doc.get("choices", ()):
                out.add(choice.get("index", 0), spec.choice_text(choice))
            usage = doc.get("usage") or {}
            out.prompt_tokens = int(usage.get("prompt_tokens", 0))
            out.completion_tokens = int(usage.get("completion_tokens", 0))
            ctx.first_token = time.perf_counter()
            if self._attribute(ctx):
                doc["attribution"] = out.attribution
            answer = msgspec.json.encode(doc)
            ctx.set_outcome("ok", 200)
            try:
                # Not held on failure: the response is refused instead, so it is not billed.
                await self.capture.record(ctx, req, hold=False)
            except UsageNotRecorded as e:
                raise as_api_error(e) from None
            return answer
        except DomainError as e:  # serving's, from the failover
            err = as_api_error(e)
            ctx.fail(err)
            raise err from None
        except ApiError as e:
            ctx.fail(e)
            raise
        finally:
            if not ctx.recorded:
                with suppress(UsageNotRecorded):  # an error: nothing to bill
                    await self.capture.record(ctx, req)

    @staticmethod
    async def _post(ctx: CallContext, handle: EngineHandle, path: str, body: bytes) -> bytes:
        ctx.engine = handle.name
        return await handle.client.post_json(path, body)

    # --- streaming -----------------------------------------------------------------------
    async def open_stream(self, ctx: CallContext, req: Request) -> AsyncIterator[bytes]:
        """Returns an iterator of SSE frames whose first frame is already fetched, so that
        errors before any output are raised here as HTTP errors, not inside a 200 stream."""
        try:
            ctx.target = await self.admission.admit(ctx, req)
        except BaseException as e:
            # Like complete(): every request leaves one record, whatever refused it (an API
            # error, or e.g. budgets unreachable with fail_open off: the 500 it becomes).
            if isinstance(e, ApiError):
                ctx.fail(e)
            with suppress(UsageNotRecorded):  # an error: nothing to bill
                await self.capture.record(ctx, req)
            raise
        frames = self._frames(ctx, req, ENDPOINTS[ctx.endpoint], ctx.target)
        try:
            first = await anext(frames)
        except StopAsyncIteration:
            first = DONE
        return prepend(first, frames)

    async def _frames(
        self, ctx: CallContext, req: Request, spec: EndpointSpec, target: Target
    ) -> AsyncIterator[bytes]:
        ctx.set_outcome("client_cancelled", 200)  # until it ends otherwise
        relay = ChunkRelay(ctx, req, spec)
        body = engine_body(req, target, stream=True)
        failover = self._failover(ctx, target)
        try:
            chunks = failover.stream(lambda handle: self._open(ctx, handle, spec.path, body))
            # aclosing: an abandoned stream must close the engine request now.
            async with aclosing(chunks) as engine_chunks:
                async for payload in engine_chunks:
                    frame = relay.frame(payload)
                    if frame is not None:
                        failover.commit()  # output reaches the client: never retried now
                        yield frame
            self._attribute(ctx)
            ctx.set_outcome("ok", 200)
            try:
                # The output went out already: a record no store takes now is held and
                # retried by the sink (billed when it lands), never dropped.
                await self.capture.record(ctx, req)
            except UsageNotRecorded as e:
                yield error_event(as_api_error(e))
                return
            last = relay.last_frame(ctx.output.attribution)  # usage and attribution
            if last is not None:
                yield last
            yield DONE
        except DomainError as e:  # serving's, from the failover
            err = as_api_error(e)
            ctx.fail(err)
            if not failover.committed:  # still before the status line: a plain error
                raise err from None
            # Output already went out under a 200: end the stream with an error event.
            yield error_event(err)
        except ApiError as e:
            ctx.fail(e)
            raise
        finally:
            if not ctx.recorded:
                # Possibly cancelled: recorded from a task of its own, so that cancelling
                # this one cannot interrupt the write.
                self.capture.record_later(ctx, req, self._token_counter(ctx, req, failover, body))

    @staticmethod
    def _open(
        ctx: CallContext, handle: EngineHandle, path: str, body: bytes
    ) -> AsyncIterator[bytes]:
        ctx.engine = handle.name
        return handle.client.stream(path, body)

    @staticmethod
    def _token_counter(
        ctx: CallContext, req: Request, failover: Failover, body: bytes
    ) -> TokenCounter | None:
        """Where to count a stream's tokens that ended before the engine's usage chunk: its
        engine, or when that one died another of the same base (its tokenizer), asked with
        the base model's name (it may not hold the adapter). None: nothing to count."""
        handle = failover.handle
        if handle is None or ctx.output.usage_seen:
            return None
        if handle.healthy:
            return handle, body
        base = Target(failover.target.base, None)  # the stand-in may not hold the adapter
        return failover.stand_in(handle), engine_body(req, base, stream=True)

    # --- engines and attribution ---------------------------------------------------------
    def _failover(self, ctx: CallContext, target: Target) -> Failover:
        def note(handle: EngineHandle, e: EngineUnavailable) -> None:
            # The usage record is written once, by the caller, after the last attempt.
            self.failovers += 1
            log.warning("request %s: engine %s failed (%s); retrying elsewhere",
                        ctx.request_id, handle.name, e)  # fmt: skip

        return Failover(self.pool, target, on_failover=note)

    def _attribute(self, ctx: CallContext) -> bool:
        """Attribute the finished output of an adapter request (inline: spans + weights);
        a failure here never fails the response, it only leaves it unattributed."""
        target, out = ctx.target, ctx.output
        if self.attributor is None or target is None or target.adapter is None:
            return False
        started = time.perf_counter()
        try:
            out.attribution = self.attributor(target.adapter.name, out.text())
            metering_metrics.attribution_observed("span", time.perf_counter() - started)
        except Exception:
            log.exception("attribution failed for adapter %s", target.adapter.name)
            out.attribution = None
        return out.attribution is not None
