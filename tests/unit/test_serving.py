"""Adapter placement, engine choice and rate limits, without HTTP."""

from __future__ import annotations

import asyncio

import pytest

from gateway.ratelimit import RateLimiter
from serving.engine import EngineUnavailable
from serving.fake import FakeEngine
from serving.placement import AdapterPlacement
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
