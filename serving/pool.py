"""The engines a gateway can send work to, and which one gets a request.

An adapter's request goes to a healthy engine that already holds it; otherwise to the healthy
engine with the fewest requests in flight, which then loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from serving.engine import EngineClient, EngineUnavailable
from serving.placement import AdapterPlacement
from serving.registry import Target

log = logging.getLogger(__name__)


@dataclass(eq=False)
class EngineHandle:
    client: EngineClient
    placement: AdapterPlacement
    healthy: bool = False
    in_flight: int = 0
    restarts: int = 0
    bases: frozenset[str] = field(default_factory=frozenset)
    """Base models this engine serves; empty means any."""

    @property
    def name(self) -> str:
        return self.client.name

    def mark_down(self) -> None:
        if self.healthy:
            log.warning("engine %s marked down", self.name)
        self.healthy = False

    def mark_up(self, *, restarted: bool = False) -> None:
        if restarted:
            self.placement.reset()
            self.restarts += 1
        self.healthy = True


class NoEngineAvailable(Exception):
    pass


class EnginePool:
    def __init__(self, handles: list[EngineHandle]) -> None:
        self.handles = handles
        self._watch: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        return any(h.healthy for h in self.handles)

    def pick(self, target: Target) -> EngineHandle:
        live = [
            h for h in self.handles if h.healthy and (not h.bases or target.base.name in h.bases)
        ]
        if not live:
            raise NoEngineAvailable(target.base.name)
        if target.adapter is not None:
            holding = [h for h in live if h.placement.holds(target.adapter.engine_name)]
            if holding:
                return min(holding, key=lambda h: h.in_flight)
        return min(live, key=lambda h: h.in_flight)

    @asynccontextmanager
    async def lease(self, target: Target) -> AsyncIterator[EngineHandle]:
        """Pick an engine for `target`, make sure its adapter is loaded, count it in flight."""
        handle = self.pick(target)
        handle.in_flight += 1
        try:
            if target.adapter is None:
                yield handle
            else:
                async with handle.placement.use(target.adapter):
                    yield handle
        except EngineUnavailable:
            handle.mark_down()
            raise
        finally:
            handle.in_flight -= 1

    def start_health_checks(self, interval_s: float = 2.0) -> None:
        """Poll engines that nobody supervises locally (external URLs)."""
        self._watch = asyncio.create_task(self._health_loop(interval_s))

    async def _health_loop(self, interval_s: float) -> None:
        while True:
            for h in self.handles:
                ok = await h.client.healthy()
                if ok and not h.healthy:
                    # We cannot tell a restart from a blip, so assume the worst: reload.
                    h.mark_up(restarted=True)
                elif not ok:
                    h.mark_down()
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for h in self.handles:
            await h.client.close()
