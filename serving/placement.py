"""Adapter placement inside one engine: load on first use, LRU eviction within its LoRA slots.

vLLM's runtime LoRA API loads adapters while serving. Concurrent first requests for one adapter
share a single load (single-flight); when the slots are full the least recently used adapter
with no request in flight is unloaded first.

Every wait is bounded. A request whose adapter needs a slot while every slot serves a request
waits at most `wait_s` (from the moment it asked, a deadline the pool's load gate shares), then
fails with `AdapterSlotsBusy`, which the gateway answers 503 with `Retry-After`. Loads and
unloads are bounded by the engine client's own timeout; requests that share another request's
load wait for that load, so for its bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from core.errors import Unavailable
from serving import metrics
from serving.engine import EngineClient, EngineHTTPError
from serving.registry import Adapter


@dataclass(slots=True)
class PlacementStats:
    loads: int = 0
    evictions: int = 0
    load_seconds: float = 0.0


DEFAULT_WAIT_S = 30.0
"""How long a request may wait for a LoRA slot (or for its turn to load) by default."""


class AdapterLoadFailed(Unavailable):
    """The engine refused to load an adapter (bad files, incompatible rank, ...)."""

    def __init__(self, adapter: str, reason: str) -> None:
        super().__init__(f"adapter {adapter!r} could not be loaded: {reason}")
        self.adapter = adapter
        self.reason = reason


class AdapterSlotsBusy(AdapterLoadFailed):
    """Every LoRA slot of the engine served a request for the whole wait: nothing is wrong
    with the adapter, the engine is full; the client may retry later."""

    def __init__(self, adapter: str, waited_s: float) -> None:
        super().__init__(adapter, f"every LoRA slot stayed busy for {waited_s:g} s")
        self.waited_s = waited_s


class AdapterPlacement:
    def __init__(self, engine: EngineClient, slots: int, *, wait_s: float = DEFAULT_WAIT_S) -> None:
        if slots < 1:
            raise ValueError("an engine needs at least one LoRA slot")
        if wait_s <= 0:
            raise ValueError("the wait for a LoRA slot must be positive")
        self.engine = engine
        self.slots = slots
        self.wait_s = wait_s
        self.stats = PlacementStats()
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._in_flight: Counter[str] = Counter()
        self._slot_freed = asyncio.Event()

    def holds(self, name: str) -> bool:
        return name in self._loaded

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def reset(self) -> None:
        """The engine restarted: it holds no adapters any more."""
        self._loaded.clear()

    def deadline(self) -> float:
        """The latest event-loop time a request asking now may wait until."""
        return asyncio.get_running_loop().time() + self.wait_s

    @asynccontextmanager
    async def use(self, adapter: Adapter, *, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold `adapter` loaded for the duration of one request; `AdapterSlotsBusy` when no
        slot frees up before `deadline` (event-loop time; default `wait_s` from now)."""
        key = adapter.engine_name
        await self._ensure(adapter, self.deadline() if deadline is None else deadline)
        self._in_flight[key] += 1
        try:
            yield
        finally:
            # Synchronous on purpose: this runs while a cancelled request unwinds.
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]
                self._slot_freed.set()

    async def _ensure(self, adapter: Adapter, deadline: float) -> None:
        key = adapter.engine_name
        while True:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return
            pending = self._loading.get(key)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._loading[key] = fut
            try:
                await self._make_room(adapter, deadline)
                started = time.perf_counter()
                try:
                    await self.engine.load_adapter(key, adapter.path)
                except EngineHTTPError as e:
                    metrics.adapter_load_failed(key)
                    raise AdapterLoadFailed(adapter.name, e.message) from e
                elapsed = time.perf_counter() - started
                self.stats.loads += 1
                self.stats.load_seconds += elapsed
                metrics.adapter_loaded(key, elapsed)
                self._loaded[key] = None
                fut.set_result(None)
            except BaseException as e:
                fut.set_exception(e)
                fut.exception()  # waiters re-raise it; don't warn about it never being read
                raise
            finally:
                del self._loading[key]
            return

    async def _make_room(self, adapter: Adapter, deadline: float) -> None:
        while len(self._loaded) + len(self._loading) > self.slots:
            victim = next((n for n in self._loaded if self._in_flight[n] == 0), None)
            if victim is None:
                # Every slot serves a request right now: wait for one to finish, not forever
                # (the caller may hold the engine's load gate, which every miss waits for).
                self._slot_freed.clear()
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._slot_freed.wait()
                except TimeoutError:
                    raise AdapterSlotsBusy(adapter.name, self.wait_s) from None
                continue
            del self._loaded[victim]
            try:
                await self.engine.unload_adapter(victim)
            except EngineHTTPError as e:  # the engine's refusal is not the client's bad request
                raise AdapterLoadFailed(adapter.name, f"unloading {victim}: {e.message}") from e
            self.stats.evictions += 1
            metrics.adapter_evicted(victim)
