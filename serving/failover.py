"""Running one request on the engine pool, and going again when that can only help.

`Failover(pool, target)` runs a request, as one call (`call`) or as a stream of engine chunks
(`stream`), the same way for both:

1. Pick an engine for the target (`EnginePool.pick`, without the engines that failed it) and
   use it (`EnginePool.use`: the adapter is loaded there if it is not yet).
2. An engine that cannot be reached or breaks (`EngineUnavailable`; the pool marks it down)
   is left out and the request starts over on another engine.
3. An engine that answers 404 for an adapter has forgotten it (it restarted behind our back):
   the adapter's placement there is reset and the request goes again, which reloads it.
4. One retry in all: a reload and a failover share it.
5. Never after the first byte: once the caller has `commit`ted (output reached its client),
   a failure is the caller's to report, not to hide by starting over.

Anything else (no engine for the base, an adapter that cannot be loaded or finds no free
slot, any other answer of the engine) is raised as it is. These are serving's exceptions,
kinds of `core.errors.Unavailable`; the gateway decides what a client is told.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

from serving.engine import EngineHTTPError, EngineUnavailable
from serving.pool import EngineHandle, EnginePool, NoEngineAvailable
from serving.registry import Target

log = logging.getLogger(__name__)

T = TypeVar("T")

OnFailover = Callable[[EngineHandle, EngineUnavailable], None]
"""Told when a request leaves a failed engine for another (before the retry)."""


class Failover:
    """One request's attempts on the pool. Not reusable: make one per request."""

    def __init__(
        self,
        pool: EnginePool,
        target: Target,
        *,
        on_failover: OnFailover | None = None,
        retries: int = 1,
    ) -> None:
        self.pool = pool
        self.target = target
        self.on_failover = on_failover
        self.retries_left = retries
        self.failed: list[EngineHandle] = []
        """Engines that could not be reached: not picked again for this request."""
        self.handle: EngineHandle | None = None
        """The engine of the latest attempt (None until one was picked)."""
        self.committed = False

    def commit(self) -> None:
        """Output reached the client: from now on nothing is retried."""
        self.committed = True

    async def call(self, run: Callable[[EngineHandle], Awaitable[T]]) -> T:
        """`run(engine)` on an engine in use for the target, again elsewhere if that helps."""
        while True:
            handle = None
            try:
                handle = self._pick()
                async with self.pool.use(handle, self.target):
                    return await run(handle)
            except (EngineHTTPError, EngineUnavailable) as e:
                if handle is None or not self._again(e, handle):
                    raise

    async def stream(
        self, open_stream: Callable[[EngineHandle], AsyncIterator[bytes]]
    ) -> AsyncGenerator[bytes, None]:
        """The chunks of `open_stream(engine)`, started over elsewhere if that helps before
        the caller commits. Close it (`aclosing`) when abandoning it: that closes the engine's
        stream at once, so the engine stops generating."""
        while True:
            handle = None
            try:
                handle = self._pick()
                async with self.pool.use(handle, self.target):
                    async with aclosing(open_stream(handle)) as chunks:  # type: ignore[type-var]
                        async for chunk in chunks:
                            yield chunk
                return
            except (EngineHTTPError, EngineUnavailable) as e:
                if handle is None or not self._again(e, handle):
                    raise

    def stand_in(self, dead: EngineHandle) -> EngineHandle:
        """An engine to count the request's tokens with after the fact when `dead`, its
        engine, died: another engine of the same base model (so the same tokenizer), else
        `dead` all the same."""
        try:
            return self.pool.pick(Target(self.target.base, None), exclude=(dead,))
        except NoEngineAvailable:
            return dead

    def _pick(self) -> EngineHandle:
        self.handle = self.pool.pick(self.target, exclude=self.failed)
        return self.handle

    def _again(self, e: EngineHTTPError | EngineUnavailable, handle: EngineHandle) -> bool:
        """Whether the request goes again after `e` on `handle` (and what changes first)."""
        if self.committed or self.retries_left <= 0:
            return False
        if isinstance(e, EngineHTTPError):
            # An engine restarted behind our back forgets runtime-loaded adapters: reload.
            if e.status != 404 or self.target.adapter is None:
                return False
            handle.placement.reset()
        else:
            # Marked down by the pool already; nothing reached the client: start over.
            self.failed.append(handle)
            if self.on_failover is not None:
                self.on_failover(handle, e)
        self.retries_left -= 1
        return True
