"""Adapter placement, engine choice and rate limits, without HTTP."""

from __future__ import annotations

import asyncio

import pytest

from gateway.ratelimit import RateLimiter
from serving.engine import EngineHTTPError, EngineUnavailable
from serving.fake import FakeEngine
from serving.placement import AdapterLoadFailed, AdapterPlacement, AdapterSlotsBusy
from serving.pool import EngineHandle, EnginePool, NoEngineAvailable
from serving.registry import Adapter, BaseModel, ModelRegistry, UnknownModel

BASE = BaseModel("royalty-tiny", "/m/base")
A, B, C = (Adapter(n, "royalty-tiny", f"/m/{n}") for n in ("a", "b", "c"))


async def test_failed_load_is_shared_then_retried() -> None:
    engine = FakeEngine(load_delay_s=0.02)
    placement = AdapterPlacement(engine, slots=2)
    engine.alive = False

    async def use() -> None:
        async with placement.use(A):
            pass

    results = await asyncio.gather(*[use() for _ in range(5)], return_exceptions=True)
    assert all(isinstance(r, EngineUnavailable) for r in results)
    assert not placement.holds("a")
    engine.alive = True
    await use()
    assert placement.holds("a") and engine.load_calls == ["a"]


async def test_busy_adapters_are_not_evicted() -> None:
    engine = FakeEngine()
    placement = AdapterPlacement(engine, slots=1)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hold_a() -> None:
        async with placement.use(A):
            entered.set()
            await release.wait()

    holder = asyncio.create_task(hold_a())
    await entered.wait()
    waiter = asyncio.create_task(placement.use(B).__aenter__())
    await asyncio.sleep(0.05)
    assert not waiter.done() and engine.unload_calls == []  # waits for a free slot
    release.set()
    await holder
    await asyncio.wait_for(waiter, 1)
    assert engine.unload_calls == ["a"] and placement.loaded == ["b"]


def test_pool_prefers_an_engine_that_holds_the_adapter() -> None:
    e1, e2 = FakeEngine("e1"), FakeEngine("e2")
    h1 = EngineHandle(e1, AdapterPlacement(e1, 2), healthy=True)
    h2 = EngineHandle(e2, AdapterPlacement(e2, 2), healthy=True)
    h2.placement._loaded["b"] = None
    h2.in_flight = 5
    pool = EnginePool([h1, h2])
    reg = ModelRegistry()
    reg.add_base(BASE)
    reg.add_adapter(B)
    reg.add_adapter(C)
    assert pool.pick(reg.resolve("b")) is h2  # affinity beats load
    assert pool.pick(reg.resolve("c")) is h1  # otherwise least loaded
    h1.healthy = h2.healthy = False
    with pytest.raises(NoEngineAvailable):
        pool.pick(reg.resolve("c"))


def test_registry_rules() -> None:
    reg = ModelRegistry()
    reg.add_base(BASE)
    with pytest.raises(UnknownModel):
        reg.add_adapter(Adapter("x", "other-base", "/m/x"))
    with pytest.raises(ValueError):
        reg.add_adapter(Adapter("royalty-tiny", "royalty-tiny", "/m/x"))
    with pytest.raises(UnknownModel):
        reg.resolve("missing")


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    rl = RateLimiter(clock=lambda: now[0])
    assert rl.admit(1, rpm=2, tpm=1000) is None
    assert rl.admit(1, rpm=2, tpm=1000) is None
    wait = rl.admit(1, rpm=2, tpm=1000)
    assert wait == pytest.approx(30.0)
    assert rl.admit(2, rpm=2, tpm=1000) is None  # keys are independent
    now[0] += 30.0
    assert rl.admit(1, rpm=2, tpm=1000) is None
    rl.debit_tokens(1, tpm=60, tokens=120)  # overdraw: blocked until back above zero
    wait = rl.admit(1, rpm=100, tpm=60)
    assert wait is not None and wait > 60
    assert RateLimiter.retry_after_header(0.2) == "1"


async def test_known_keys_survive_a_key_store_outage() -> None:
    from gateway.auth import Authenticator, InMemoryKeyStore, KeyStoreUnavailable

    store = InMemoryKeyStore()
    key, info = await store.create("acme", frozenset({"inference"}), None, None)
    auth = Authenticator(store, ttl_s=0.0)  # every call goes to the store
    assert await auth.authenticate(key) == info

    async def down(_: bytes) -> None:
        raise KeyStoreUnavailable("down")

    store.lookup = down  # type: ignore[method-assign]
    assert await auth.authenticate(key) == info  # stale but known: keep serving
    with pytest.raises(KeyStoreUnavailable):
        await auth.authenticate("rk-never-seen")


async def _hold(placement: AdapterPlacement, adapter: Adapter, entered: asyncio.Event,
                release: asyncio.Event) -> None:  # fmt: skip
    async with placement.use(adapter):
        entered.set()
        await release.wait()


async def test_a_request_waits_for_a_busy_slot_only_so_long() -> None:
    engine = FakeEngine()
    placement = AdapterPlacement(engine, slots=1, wait_s=0.1)
    entered, release = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold(placement, A, entered, release))
    await entered.wait()
    started = asyncio.get_running_loop().time()
    with pytest.raises(AdapterSlotsBusy) as busy:
        async with placement.use(B):
            pass
    assert 0.1 <= asyncio.get_running_loop().time() - started < 1.0
    assert isinstance(busy.value, AdapterLoadFailed) and busy.value.adapter == "b"
    # nothing was evicted or left half-loaded; a freed slot serves the next request
    assert placement.loaded == ["a"] and not placement._loading and engine.unload_calls == []
    release.set()
    await holder
    async with placement.use(B):
        assert placement.loaded == ["b"]


async def test_misses_queued_at_the_load_gate_time_out_too_and_free_the_gate() -> None:
    """Every slot busy, two distinct misses: one waits for a slot holding the engine's load
    gate, the other waits for the gate. Both get AdapterSlotsBusy within the bound."""
    engine = FakeEngine()
    handle = EngineHandle(engine, AdapterPlacement(engine, 1, wait_s=0.15), healthy=True)
    pool = EnginePool([handle])
    reg = ModelRegistry()
    reg.add_base(BASE)
    for a in (A, B, C):
        reg.add_adapter(a)
    entered, release = asyncio.Event(), asyncio.Event()

    async def hold_a() -> None:
        async with pool.use(handle, reg.resolve("a")):
            entered.set()
            await release.wait()

    async def ask(name: str) -> None:
        async with pool.use(handle, reg.resolve(name)):
            pass

    holder = asyncio.create_task(hold_a())
    await entered.wait()
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.wait_for(
        asyncio.gather(ask("b"), ask("c"), return_exceptions=True), timeout=2
    )
    assert all(isinstance(r, AdapterSlotsBusy) for r in results), results
    assert loop.time() - started < 1.0  # one bound for gate and slot, not one each in turn
    assert not handle.load_gate.locked() and not handle.incoming
    assert handle.in_flight == 1 and handle.placement.loaded == ["a"]
    release.set()
    await holder
    await ask("c")  # the gate and the slot are free again
    assert handle.placement.loaded == ["c"] and handle.in_flight == 0


class RefusingUnload(FakeEngine):
    async def unload_adapter(self, name: str) -> None:
        raise EngineHTTPError(500, b'{"error": {"message": "busy"}}')


async def test_an_unload_the_engine_refuses_is_an_adapter_load_failure() -> None:
    engine = RefusingUnload()
    placement = AdapterPlacement(engine, slots=1)
    async with placement.use(A):
        pass
    with pytest.raises(AdapterLoadFailed, match="unloading a: busy"):
        async with placement.use(B):
            pass


def test_a_slot_wait_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AdapterPlacement(FakeEngine(), 1, wait_s=0)
