"""PostgreSQL crashes (stop -m immediate: no checkpoint, WAL replay on start) while posting
batches are in flight: afterwards every event is posted exactly once and every ledger
invariant holds."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random

import pytest
from support.pg import PrivatePostgres
from support.usage_events import usage_event

from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory
from metering.pg import driver
from metering.usage.store import PostgresUsageStore
from royalty.db import create_engine, migrate

pytestmark = pytest.mark.integration
T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


async def test_postgres_crashes_mid_batch_change_nothing(private_postgres: PrivatePostgres) -> None:
    pg = private_postgres
    engine = create_engine(pg.url, pool_size=2)
    try:
        await migrate(engine)
        async with driver(engine) as conn:
            ids = [
                r["id"]
                for r in await conn.fetch(
                    "INSERT INTO accounts (name) SELECT 'a' || g FROM generate_series(1, 6) g RETURNING id"
                )
            ]
        await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 3_000_000, T0)
        directory = InMemoryAdapterDirectory(
            {"recipes": AdapterInfo(ids[0], {ids[1]: 2, ids[2]: 3})}
        )
        rng = random.Random(5)
        events = [
            usage_event(  # the draws in their old order: the same seeded events as before
                f"e{i:06d}",
                account_id=rng.choice(ids[3:]),
                model="m",
                adapter=rng.choice(["recipes", None]),
                prompt_tokens=rng.randint(1, 900),
                completion_tokens=rng.randint(1, 300),
                started_at=T0 + dt.timedelta(seconds=i),
            )
            for i in range(60_000)
        ]
        await PostgresUsageStore(engine, timeout_s=60).insert_batch(events)
        worker = PostingWorker(engine, directory, batch_size=2_000)
        crashes = 0
        for delay in (0.05, 0.2, 0.4):
            task = asyncio.create_task(worker.drain(concurrency=2))
            await asyncio.sleep(delay)
            await asyncio.to_thread(pg.stop, "immediate")
            with contextlib.suppress(Exception):
                await task
            crashes += 1
            await asyncio.to_thread(pg.start)
            await engine.dispose()  # the pool's connections died with the server
        assert await worker.queue_depth() > 0, "a crash should have left work in the queue"
        await worker.drain()
        assert await violations(engine) == []
        async with driver(engine) as conn:
            posted = await conn.fetchval("SELECT count(*) FROM usage_postings")
            charges = await conn.fetchval("SELECT sum(charge) FROM usage_postings")
        assert posted == len(events) and crashes == 3
        expected = sum(
            (e.prompt_tokens * 1_000_000 + e.completion_tokens * 3_000_000 + 500_000) // 1_000_000
            for e in events
        )
        assert charges == expected
    finally:
        await engine.dispose()
