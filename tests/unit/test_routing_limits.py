"""The shared rate limiter's arithmetic and concurrency, over the in-memory counter store
(the same store shared by several limiters stands for several gateway processes)."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from gateway.ratelimit import InMemoryCounters, SharedRateLimiter, granted


@given(
    limit=st.integers(1, 500),
    asks=st.lists(st.integers(1, 100), min_size=1, max_size=40),
)
def test_grants_never_exceed_the_limit_and_fill_it(limit: int, asks: list[int]) -> None:
    total = 0
    grants = []
    for ask in asks:  # any interleaving of processes is some order of atomic adds
        total += ask
        grants.append(granted(total, ask, limit))
    assert all(0 <= g <= a for g, a in zip(grants, asks, strict=True))
    assert sum(grants) == min(limit, sum(asks))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_concurrent_processes_admit_the_budget_exactly() -> None:
    store = InMemoryCounters()
    clock = Clock(60 * 1000 + 1)
    limiters = [SharedRateLimiter(store, clock=clock) for _ in range(4)]

    async def one(i: int) -> bool:
        await asyncio.sleep(0)
        return await limiters[i % 4].acquire(1, 50, 10**9) is None

    results = await asyncio.gather(*(one(i) for i in range(300)))
    assert sum(results) == 50
    # Single-flight leases: ~50/4 slices plus one "spent" answer per limiter and kind.
    assert sum(lim.store_calls for lim in limiters) <= 50 // 4 + 4 * 2 + 1


async def test_a_lease_does_not_survive_its_minute() -> None:
    """At most the budget per minute, and at most twice it across a minute's edge."""
    store = InMemoryCounters()
    clock = Clock(60 * 2000 + 59.5)
    a, b = SharedRateLimiter(store, clock=clock), SharedRateLimiter(store, clock=clock)
    rpm = 32  # slices of 2
    first = [await x.acquire(7, rpm, 10**9) is None for x in (a, b) for _ in range(40)]
    assert sum(first) == rpm
    clock.now += 1.0  # the next minute: leases of the last one are gone
    second = [await x.acquire(7, rpm, 10**9) is None for x in (a, b) for _ in range(40)]
    assert sum(second) == rpm
    assert sum(first) + sum(second) <= 2 * rpm


async def test_refusals_in_a_spent_minute_cost_no_round_trip() -> None:
    store = InMemoryCounters()
    clock = Clock(60 * 3000 + 1)
    a, b = SharedRateLimiter(store, clock=clock), SharedRateLimiter(store, clock=clock)
    assert await a.acquire(2, 1, 10**9) is None  # a spends the minute
    # b's own bucket would admit: the store says no once, then b refuses locally.
    waits = [await b.acquire(2, 1, 10**9) for _ in range(100)]
    assert all(w is not None and 0 < w <= 59 for w in waits)
    assert b.store_calls == 2  # its token slice, then the "spent" answer for requests
    # a's own bucket refuses before the store is asked at all.
    calls = a.store_calls
    assert await a.acquire(2, 1, 10**9) is not None
    assert a.store_calls == calls


async def test_store_outage_falls_back_then_recovers() -> None:
    store = InMemoryCounters()
    clock = Clock(60 * 4000 + 1)
    lim = SharedRateLimiter(store, clock=clock, retry_store_after_s=5)
    store.down = True
    assert [await lim.acquire(3, 2, 10**9) is None for _ in range(3)] == [True, True, False]
    store.down = False
    clock.now += 1  # still within the back-off: per process
    calls = lim.store_calls
    await lim.acquire(3, 2, 10**9)
    assert lim.store_calls == calls
    clock.now += 60  # the process's own bucket has refilled as well
    assert await lim.acquire(3, 2, 10**9) is None
    assert lim.store_calls > calls
