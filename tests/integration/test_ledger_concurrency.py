"""Posters in two processes' pools (two engines), each with two batches in flight, racing with
top-ups and budget reservations over the same accounts: no deadlock, no event posted twice,
every invariant holds."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event

from metering.budgets.store import InsufficientCredit, PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.book import PostgresLedger
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory
from metering.pg import driver
from metering.usage.store import PostgresUsageStore
from royalty.db import create_engine

pytestmark = pytest.mark.integration
T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


async def test_racing_posters_topups_and_reservations(
    engine: AsyncEngine, database_url: str
) -> None:
    async with driver(engine) as conn:
        ids = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO accounts (name) SELECT 'u' || g FROM generate_series(1, 40) g RETURNING id"
            )
        ]
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 2_000_000, T0)
    # every batch creates new contributor and consumer accounts: the racy part
    directory = InMemoryAdapterDirectory(
        {
            f"a{k}": AdapterInfo(ids[k], {ids[10 + j]: j + 1 for j in range(k, k + 8)})
            for k in range(8)
        }
    )
    rng = random.Random(3)
    events = [
        usage_event(  # the draws in their old order: the same seeded events as before
            f"c{i:05d}",
            account_id=rng.choice(ids[20:]),
            model="m",
            adapter=rng.choice([f"a{k}" for k in range(8)] + [None]),
            prompt_tokens=rng.randint(1, 500),
            completion_tokens=rng.randint(1, 99),
            started_at=T0 + dt.timedelta(seconds=i),
        )
        for i in range(6000)
    ]
    await PostgresUsageStore(engine).insert_batch(events)
    other = create_engine(database_url, pool_size=4)
    try:
        workers = [
            PostingWorker(engine, directory, batch_size=250),
            PostingWorker(other, directory, batch_size=300),
        ]
        ledger = PostgresLedger(other)
        budgets = PostgresBudgets(engine)

        async def churn() -> None:
            for i in range(150):
                who = rng.choice(ids[20:])
                await ledger.top_up(who, rng.randint(1, 5000))
                try:
                    await budgets.reserve(
                        who, f"c{rng.randrange(6000):05d}-r{i}", rng.randint(1, 3000)
                    )
                except InsufficientCredit:
                    pass

        posted = await asyncio.gather(*(w.drain(concurrency=2) for w in workers), churn())
        assert posted[0] + posted[1] == len(events)
    finally:
        await other.dispose()
    assert await violations(engine) == []
