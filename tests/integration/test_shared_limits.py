"""Rate limits shared by several gateway processes through PostgreSQL (and Redis): several
limiters, each with its own connection pool as a separate process would have, admit at most
a key's per-minute budget between them, exactly, under concurrency, while asking the store
once per slice rather than once per request."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support.pg import PrivatePostgres

from gateway.ratelimit import (
    CounterStore,
    CounterStoreError,
    PostgresCounters,
    RedisCounters,
    SharedRateLimiter,
)
from royalty.db import create_engine, migrate

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[list[AsyncEngine]]:
    engs = [create_engine(database_url, pool_size=4) for _ in range(3)]
    try:
        yield engs
    finally:
        for e in engs:
            await e.dispose()


async def hammer(limiters: list[SharedRateLimiter], key_id: int, rpm: int, tries: int) -> int:
    """`tries` concurrent requests spread over the limiters; how many were admitted."""

    async def one(i: int) -> bool:
        return await limiters[i % len(limiters)].acquire(key_id, rpm, 10**9) is None

    return sum(await asyncio.gather(*(one(i) for i in range(tries))))


async def test_processes_share_one_budget_per_minute_exactly(engines: list[AsyncEngine]) -> None:
    clock = Clock(600 * 60 + 5.0)
    limiters = [SharedRateLimiter(PostgresCounters(e), clock=clock) for e in engines]
    rpm = 100
    assert await hammer(limiters, key_id=1, rpm=rpm, tries=400) == rpm
    # Leasing: ~rpm/slice round trips, not one per request (plus one "spent" answer each).
    calls = sum(lim.store_calls for lim in limiters)
    assert calls <= rpm // limiters[0].slice_of(rpm) + 2 * len(limiters) + 2, calls
    # Refused locally for the rest of the minute: no more round trips.
    assert await hammer(limiters, key_id=1, rpm=rpm, tries=50) == 0
    assert sum(lim.store_calls for lim in limiters) == calls
    # Another key has its own budget; the next minute starts afresh.
    assert await hammer(limiters, key_id=2, rpm=7, tries=30) == 7
    clock.now += 60
    assert await hammer(limiters, key_id=1, rpm=rpm, tries=150) == rpm


async def test_retry_after_points_at_the_next_minute(engines: list[AsyncEngine]) -> None:
    clock = Clock(900 * 60 + 42.5)
    a, b = (SharedRateLimiter(PostgresCounters(e), clock=clock) for e in engines[:2])
    assert await a.acquire(3, 2, 10**6) is None
    assert await a.acquire(3, 2, 10**6) is None
    # b's own bucket is full, the shared minute is spent: retry when the next one starts.
    wait = await b.acquire(3, 2, 10**6)
    assert wait is not None and wait == pytest.approx(17.5)
    assert b.retry_after_header(wait) == "18"


async def test_tokens_used_beyond_a_lease_are_charged_to_the_others(
    engines: list[AsyncEngine],
) -> None:
    clock = Clock(1200 * 60 + 1.0)
    a, b = (SharedRateLimiter(PostgresCounters(e), clock=clock) for e in engines[:2])
    tpm = 1600  # slices of 100 tokens
    assert await a.acquire(5, 1000, tpm) is None
    a.debit_tokens(5, tpm, 1500)  # one long response: 1400 beyond a's slice
    assert await a.acquire(5, 1000, tpm) is None  # settles the debt, leases the last 100
    assert await b.acquire(5, 1000, tpm) is not None  # b sees a's debt: the minute is spent
    assert await a.acquire(5, 1000, tpm) is None  # a still holds its leased remainder
    a.debit_tokens(5, tpm, 100)
    assert await a.acquire(5, 1000, tpm) is not None
    async with engines[0].connect() as conn:
        used = (await conn.execute(text("SELECT used FROM rate_limit_windows WHERE key_id = 5 "
                                        "AND kind = 'tokens'"))).scalar_one()  # fmt: skip
    assert used >= 1600


async def test_old_windows_are_swept(engines: list[AsyncEngine]) -> None:
    clock = Clock(3000 * 60 + 1.0)
    lim = SharedRateLimiter(PostgresCounters(engines[0]), clock=clock)
    await lim.acquire(9, 10, 10**6)
    clock.now += 180
    await lim.acquire(9, 10, 10**6)
    await asyncio.sleep(0.2)  # the sweep runs in the background
    async with engines[0].connect() as conn:
        windows = (await conn.execute(text("SELECT window_start FROM rate_limit_windows "
                                           "WHERE key_id = 9"))).scalars().all()  # fmt: skip
    assert set(windows) == {3003}  # requests and tokens of the current minute


class Flaky:
    """A store that goes away and comes back."""

    def __init__(self, inner: CounterStore) -> None:
        self.inner = inner
        self.down = False

    async def add(self, key_id: int, kind: str, window: int, amount: int) -> int:
        if self.down:
            raise CounterStoreError("connection refused")
        return await self.inner.add(key_id, kind, window, amount)  # type: ignore[arg-type]

    async def sweep(self, before_window: int) -> None:
        await self.inner.sweep(before_window)


async def test_an_unreachable_store_falls_back_to_per_process_limits(
    engines: list[AsyncEngine],
) -> None:
    clock = Clock(4000 * 60 + 1.0)
    store = Flaky(PostgresCounters(engines[0]))
    lim = SharedRateLimiter(store, clock=clock, retry_store_after_s=5)
    store.down = True
    # No 500s and no stall: the process's own bucket (rpm 3) decides meanwhile.
    admitted = [await lim.acquire(11, 3, 10**6) is None for _ in range(5)]
    assert admitted == [True, True, True, False, False]
    store.down = False
    clock.now += 60  # the store is tried again (after 5 s) and the bucket has refilled
    assert await lim.acquire(11, 3, 10**6) is None
    assert lim.store_calls >= 2


async def test_a_real_outage_of_postgres_falls_back_too(private_postgres: PrivatePostgres) -> None:
    eng = create_engine(private_postgres.url, pool_size=2)
    await migrate(eng)
    try:
        lim = SharedRateLimiter(PostgresCounters(eng), timeout_s=2.0)
        assert await lim.acquire(1, 3, 10**6) is None  # leases a slice of 1
        await asyncio.to_thread(private_postgres.stop, "immediate")
        admitted = [await lim.acquire(1, 3, 10**6) is None for _ in range(3)]
        # The store is gone: the process's own bucket (rpm 3, one used) decides, no error
        # escapes to the request.
        assert admitted == [True, True, False]
    finally:
        await eng.dispose()


async def redis_store() -> RedisCounters:
    store = RedisCounters.from_url(REDIS_URL)
    store.prefix = f"test:{uuid.uuid4().hex}"
    try:
        await store.redis.ping()
    except Exception as e:
        await store.close()
        pytest.skip(f"no Redis at {REDIS_URL}: {e}")
    return store


async def test_redis_processes_share_one_budget_per_minute_exactly() -> None:
    stores = [await redis_store() for _ in range(3)]
    for s in stores[1:]:
        s.prefix = stores[0].prefix
    try:
        clock = Clock(700 * 60 + 5.0)
        limiters = [SharedRateLimiter(s, clock=clock) for s in stores]
        assert await hammer(limiters, key_id=1, rpm=50, tries=200) == 50
        clock.now += 60
        assert await hammer(limiters, key_id=1, rpm=50, tries=80) == 50
    finally:
        for s in stores:
            await s.close()
