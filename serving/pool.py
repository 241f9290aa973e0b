"""The engines a gateway can send work to, and which one gets a request.

Routing policies (`ROYALTY_ROUTING`):

- `affinity` (default): an adapter's request goes to the least loaded healthy engine that
  already holds the adapter (or is loading it). When even that holder is loaded, i.e. its
  load (requests in flight from this gateway plus the engine's own queue depth, scraped from
  its `/metrics`) exceeds the least loaded engine's by `spill_at`, the request spills over
  to that engine, which loads the adapter and becomes a holder too. An adapter nobody holds
  goes to an engine with a free LoRA slot unless that one is `spill_at` busier, else to the
  least loaded engine (which evicts its least recently used adapter).
- `round_robin`: healthy engines in turn, regardless of adapters (the benchmark's baseline).

A request for an adapter the engine does not hold waits for the engine's load gate and then
for a free LoRA slot at most the placement's `wait_s` in all (`AdapterSlotsBusy`, a 503 with
`Retry-After` at the gateway), so a full engine never holds a request, or the gate, forever.

An engine is marked down at once when a request to it fails to connect or breaks
(`EngineUnavailable`); the health loop marks it up again when `/health` answers, assuming a
restart (its adapters are reloaded on demand). Retrying on another engine is
`serving.failover`'s decision, which passes the failed engine in `exclude`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from core.errors import Unavailable
from serving import metrics
from serving.engine import EngineClient, EngineUnavailable
from serving.placement import AdapterPlacement, AdapterSlotsBusy
from serving.registry import Target

log = logging.getLogger(__name__)

Routing = Literal["affinity", "round_robin"]
ROUTINGS: tuple[Routing, ...] = ("affinity", "round_robin")


@dataclass(eq=False)
class EngineHandle:
    client: EngineClient
    placement: AdapterPlacement
    healthy: bool = False
    in_flight: int = 0
    restarts: int = 0
    bases: frozenset[str] = field(default_factory=frozenset)
    """Base models this engine serves; empty means any."""
    queue_waiting: float = 0.0
    """The engine's own queue depth (`vllm:num_requests_waiting`) as last scraped; it counts
    the requests of every gateway, which `in_flight` (this process's) does not."""
    load_gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    """One adapter that is not on the engine yet is brought in at a time (see `use`)."""
    incoming: Counter[str] = field(default_factory=Counter)
    """Adapters whose requests wait at the load gate: routing counts them as held."""

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def load(self) -> float:
        return self.in_flight + self.queue_waiting

    def mark_down(self) -> None:
        if self.healthy:
            log.warning("engine %s marked down", self.name)
        self.healthy = False

    def mark_up(self, *, restarted: bool = False) -> None:
        if restarted:
            self.placement.reset()
            self.restarts += 1
        self.healthy = True

    def has_adapter(self, engine_name: str) -> bool:
        """Holds it, or a load of it is under way (so a burst of first requests for one
        adapter lands on one engine instead of loading it everywhere)."""
        p = self.placement
        return p.holds(engine_name) or engine_name in p._loading or engine_name in self.incoming

    def has_free_slot(self) -> bool:
        p = self.placement
        return len(p.loaded) + len(p._loading) < p.slots


class NoEngineAvailable(Unavailable):
    """No healthy engine serves the base model (`args[0]`), or every one was excluded."""


async def _acquire_before(
    gate: asyncio.Semaphore, deadline: float, adapter: str, wait_s: float
) -> None:
    try:
        async with asyncio.timeout_at(deadline):
            await gate.acquire()
    except TimeoutError:
        raise AdapterSlotsBusy(adapter, wait_s) from None


@dataclass(slots=True)
class RoutingStats:
    affinity_hits: int = 0
    spills: int = 0
    misses: int = 0


class EnginePool:
    def __init__(
        self,
        handles: list[EngineHandle],
        *,
        routing: Routing = "affinity",
        spill_at: float = 16,
    ) -> None:
        if routing not in ROUTINGS:
            raise ValueError(f"unknown routing {routing!r}; one of {', '.join(ROUTINGS)}")
        if spill_at <= 0:
            raise ValueError("spill_at must be positive")
        self.handles = handles
        self.routing: Routing = routing
        self.spill_at = spill_at
        self.stats = RoutingStats()
        self._turn = itertools.count()
        self._watch: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        return any(h.healthy for h in self.handles)

    def pick(self, target: Target, *, exclude: Collection[EngineHandle] = ()) -> EngineHandle:
        live = [
            h
            for h in self.handles
            if h.healthy and h not in exclude and (not h.bases or target.base.name in h.bases)
        ]
        if not live:
            raise NoEngineAvailable(target.base.name)
        if self.routing == "round_robin":
            return live[next(self._turn) % len(live)]
        if target.adapter is None:
            return min(live, key=lambda h: h.load)
        return self._by_affinity(live, target.adapter.engine_name)

    def _by_affinity(self, live: list[EngineHandle], adapter: str) -> EngineHandle:
        holders = [h for h in live if h.has_adapter(adapter)]
        if holders:
            best = min(holders, key=lambda h: h.load)
            other = min(live, key=lambda h: h.load)
            # Spill only when the holders are `spill_at` requests busier than the least
            # loaded engine: under even load everyone is busy, and moving there would only
            # cost an adapter load (and an eviction) without shortening any queue.
            if best.load - other.load >= self.spill_at:
                self.stats.spills += 1
                return other
            self.stats.affinity_hits += 1
            return best
        self.stats.misses += 1
        # Nobody holds it: a free slot avoids an eviction, unless that engine is loaded.
        least = min(h.load for h in live)
        return min(
            live,
            key=lambda h: (h.load - least >= self.spill_at, not h.has_free_slot(), h.load),
        )

    @asynccontextmanager
    async def lease(
        self, target: Target, *, exclude: Collection[EngineHandle] = ()
    ) -> AsyncIterator[EngineHandle]:
        """Pick an engine for `target` and `use` it."""
        async with self.use(self.pick(target, exclude=exclude), target) as handle:
            yield handle

    @asynccontextmanager
    async def use(self, handle: EngineHandle, target: Target) -> AsyncIterator[EngineHandle]:
        """Run `target` on a picked engine: load its adapter, count it in flight, and mark
        the engine down if it cannot be reached (the caller knows which one failed)."""
        handle.in_flight += 1
        try:
            async with contextlib.AsyncExitStack() as held:
                adapter = target.adapter
                p = handle.placement
                name = adapter.engine_name if adapter is not None else ""
                if adapter is not None and not p.holds(name) and name not in p._loading:
                    # A new adapter waits at the gate, so that misses cannot fill every slot
                    # with loads that each wait for a slot to free up: placement counts
                    # loads in progress as occupied slots, and with more distinct misses in
                    # flight than slots, no load could ever start. One deadline bounds the
                    # wait at the gate and for a slot together (`AdapterSlotsBusy`).
                    deadline = p.deadline()
                    handle.incoming[name] += 1
                    try:
                        await _acquire_before(handle.load_gate, deadline, adapter.name, p.wait_s)
                        try:
                            await held.enter_async_context(p.use(adapter, deadline=deadline))
                        finally:
                            handle.load_gate.release()
                    finally:
                        handle.incoming[name] -= 1
                        if handle.incoming[name] <= 0:
                            del handle.incoming[name]
                elif adapter is not None:
                    await held.enter_async_context(p.use(adapter))
                yield handle
        except EngineUnavailable:
            handle.mark_down()
            raise
        finally:
            handle.in_flight -= 1

    def note_queue(self, engine: str, waiting: float) -> None:
        """An engine's scraped queue depth (NaN: unknown, counted as empty)."""
        for h in self.handles:
            if h.name == engine:
                h.queue_waiting = 0.0 if math.isnan(waiting) else max(0.0, waiting)

    def refresh_queues(self) -> None:
        """Take queue depths from the gauge the gateway's metrics sampler sets (this
        process's values), so `serving` needs nothing from `gateway`."""
        for family in metrics.ENGINE_REQUESTS_WAITING.collect():
            for sample in family.samples:
                name = sample.labels.get("engine")
                if name is not None:
                    self.note_queue(name, sample.value)

    def start_health_checks(self, interval_s: float = 2.0) -> None:
        """Poll engines that nobody supervises locally (external URLs)."""
        self._watch = asyncio.create_task(self._health_loop(interval_s))

    async def check_health_once(self) -> None:
        async def one(h: EngineHandle) -> None:
            ok = await h.client.healthy()
            if ok and not h.healthy:
                # We cannot tell a restart from a blip, so assume the worst: reload.
                log.warning("engine %s is up", h.name)
                h.mark_up(restarted=True)
            elif not ok:
                h.mark_down()

        # Concurrently: a dead engine's 3 s timeout must not delay the others' recovery.
        await asyncio.gather(*(one(h) for h in self.handles))
        self.refresh_queues()

    async def _health_loop(self, interval_s: float) -> None:
        while True:
            try:
                await self.check_health_once()
            except Exception:  # the loop must outlive any one bad check
                log.exception("engine health check failed")
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for h in self.handles:
            await h.client.close()
