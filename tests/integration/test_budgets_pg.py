"""Budgets against real Postgres: concurrent reservations from two engines (two gateway
processes' connection pools) never hold more than the balance; settlement and posting."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event

from metering.budgets.store import InMemoryBudgets, InsufficientCredit, PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.book import PostgresLedger
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import InMemoryAdapterDirectory
from metering.pg import driver
from metering.usage.store import PostgresUsageStore
from royalty.db import create_engine

pytestmark = pytest.mark.integration


async def new_account(engine: AsyncEngine, name: str) -> int:
    async with driver(engine) as conn:
        return int(
            await conn.fetchval("INSERT INTO accounts (name) VALUES ($1) RETURNING id", name)
        )


async def test_concurrent_reservations_across_two_pools_never_overspend(
    engine: AsyncEngine, database_url: str
) -> None:
    account = await new_account(engine, "spender")
    await PostgresLedger(engine).top_up(account, 1_000)
    other = create_engine(database_url, pool_size=8)
    try:
        gateways = [PostgresBudgets(engine), PostgresBudgets(other)]
        rng = random.Random(7)
        amounts = [rng.randint(1, 60) for _ in range(300)]

        async def one(i: int) -> int:
            try:
                await gateways[i % 2].reserve(account, f"r-{i}", amounts[i])
            except InsufficientCredit as e:
                assert e.needed == amounts[i] and e.available < amounts[i]
                return 0
            return amounts[i]

        granted = await asyncio.gather(*(one(i) for i in range(len(amounts))))
        held = sum(granted)
        assert 0 < held <= 1_000
        assert 1_000 - held < max(a for a, g in zip(amounts, granted, strict=True) if g == 0)
        assert await gateways[1].available(account) == 1_000 - held
        assert await violations(engine) == []
        # Settling everything below the estimate and releasing frees the difference.
        for i, g in enumerate(granted):
            if g:
                await gateways[i % 2].settle(f"r-{i}", g // 2)
        assert await gateways[0].available(account) == 1_000 - sum(g // 2 for g in granted)
        for i, g in enumerate(granted):
            if g:
                await gateways[i % 2].release(f"r-{i}")
        assert await gateways[0].available(account) == 1_000
        assert await violations(engine) == []
    finally:
        await other.dispose()


async def test_an_account_without_credit_is_refused_and_posting_releases_holds(
    engine: AsyncEngine,
) -> None:
    account = await new_account(engine, "buyer")
    budgets = PostgresBudgets(engine)
    with pytest.raises(InsufficientCredit):
        await budgets.reserve(account, "nothing-yet", 1)
    await budgets.reserve(account, "free", 0)  # a free request needs no credit
    await PostgresLedger(engine).top_up(account, 10_000)
    catalog = PostgresCatalog(engine)
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    await catalog.set_price("tiny", "", 1_000_000, 1_000_000, t0)
    await budgets.reserve(account, "req-1", 3_000)
    await budgets.reserve(account, "req-2", 3_000)
    await budgets.settle("req-1", 2_500)
    assert await budgets.available(account) == 10_000 - 2_500 - 3_000
    ev = usage_event(
        "req-1", account_id=account, started_at=t0 + dt.timedelta(hours=1), adapter=None,
        prompt_tokens=2_000, completion_tokens=500,
    )  # fmt: skip
    await PostgresUsageStore(engine).insert_batch([ev])
    await PostingWorker(engine, InMemoryAdapterDirectory()).drain()
    # the charge (2,500) left the balance and the hold went with it, in one transaction
    assert await budgets.available(account) == 10_000 - 2_500 - 3_000
    bal = await PostgresLedger(engine).balance("consumer", account)
    assert (bal.balance, bal.held) == (7_500, 3_000)
    await budgets.settle("req-1", 9_999)  # after posting: nothing left to settle
    assert await violations(engine) == []


async def test_in_memory_budgets_follow_the_same_contract() -> None:
    b = InMemoryBudgets({1: 100})
    await b.reserve(1, "a", 60)
    with pytest.raises(InsufficientCredit):
        await b.reserve(1, "b", 41)
    await b.settle("a", 30)
    await b.reserve(1, "b", 41)
    b.post("a")
    assert await b.available(1) == 100 - 30 - 41
