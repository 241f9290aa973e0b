"""A PostgreSQL crash under load costs no usage record and duplicates none.

The server here is private to the test (own data directory and port); the machine's shared
PostgreSQL is never stopped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from support.usage_events import usage_event

from metering.usage.log import UsageLog
from metering.usage.record import UsageRecord
from metering.usage.shipper import UsageShipper
from metering.usage.store import PostgresUsageStore
from royalty.db import create_engine, migrate

if TYPE_CHECKING:
    from support.pg import PrivatePostgres

pytestmark = pytest.mark.integration


def make_record(request_id: str) -> UsageRecord:
    return usage_event(
        request_id, account_id=1, started_at=dt.datetime.now(dt.UTC), adapter=None,
        base_model="tiny-base", endpoint="chat.completions", prompt_tokens=17, completion_tokens=42,
        total_ms=5.0, ttft_ms=1.0, output_sha256="cd" * 32,
    )  # fmt: skip


class Load:
    """Appenders standing in for request handlers: an id counts once its append returned."""

    def __init__(self, log: UsageLog, tasks: int = 8) -> None:
        self.log = log
        self.acked: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(w)) for w in range(tasks)]

    async def _run(self, w: int) -> None:
        i = 0
        while not self._stop.is_set():
            rid = f"w{w}-{i}"
            await self.log.append(make_record(rid))
            self.acked.append(rid)
            i += 1
            await asyncio.sleep(0.001)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def wait_for(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def shipped_more_than(shipper: UsageShipper, n: int) -> bool:
    return shipper.shipped_total > n


async def table_counts(url: str) -> tuple[int, int, set[str]]:
    conn = await asyncpg.connect(url)
    try:
        total, distinct = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT request_id) FROM usage_events"
        )
        ids = {r[0] for r in await conn.fetch("SELECT request_id FROM usage_events")}
    finally:
        await conn.close()
    return total, distinct, ids


async def test_postgres_crash_under_load_loses_and_duplicates_nothing(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    pg = private_postgres
    engine = create_engine(pg.url, pool_size=4)
    await migrate(engine)
    log = await UsageLog.open(tmp_path / "usage", segment_bytes=256 << 10)
    store = PostgresUsageStore(engine, timeout_s=5)
    shipper = UsageShipper(log, store, batch_size=200, interval_s=0.01, max_backoff_s=0.5)
    shipper.start()
    load = Load(log)
    try:
        await wait_for(lambda: shipper.shipped_total > 500, 20, "shipping to start")

        # Crash PostgreSQL mid-load: no checkpoint, connections cut, WAL replayed on start.
        await asyncio.to_thread(pg.stop, "immediate")
        failures_before = shipper.failures_total
        await asyncio.sleep(2.5)
        assert shipper.failures_total > failures_before, "the shipper never noticed the outage"
        assert log.pending_records > 0, "appends kept succeeding into the local log"
        backlog = log.pending_records

        await asyncio.to_thread(pg.start)
        await wait_for(lambda: log.pending_records < backlog / 2, 30, "the backlog to drain")

        # More crashes at random moments while batches are in flight, to land some inside a
        # transaction or between its COMMIT and the acknowledgement.
        rng = random.Random(1)
        for _ in range(3):
            shipped = shipper.shipped_total
            await wait_for(partial(shipped_more_than, shipper, shipped), 30, "shipping to resume")
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await asyncio.to_thread(pg.stop, "immediate")
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await asyncio.to_thread(pg.start)
        await asyncio.sleep(0.5)
    finally:
        await load.stop()
        flushed = await shipper.stop(flush=True, timeout_s=60)
        await log.close()
        await engine.dispose()
    assert flushed

    total, distinct, ids = await table_counts(pg.url)
    acked = set(load.acked)
    assert len(acked) == len(load.acked)
    assert total == distinct, f"{total - distinct} duplicate rows"
    missing = acked - ids
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {sorted(missing)[:5]}"
    assert total == len(acked)
    assert len(acked) > 1000


async def test_gateway_restart_during_the_outage(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    """Records that piled up while PostgreSQL was down survive the gateway restarting before
    it comes back, and ship from the new process."""
    pg = private_postgres
    engine = create_engine(pg.url, pool_size=2)
    await migrate(engine)
    directory = tmp_path / "usage"
    try:
        log = await UsageLog.open(directory)
        shipper = UsageShipper(log, PostgresUsageStore(engine, timeout_s=5), interval_s=0.02)
        shipper.start()
        await log.append_many(make_record(f"before-{i}") for i in range(300))
        await wait_for(lambda: log.pending_records == 0, 20, "the first records to ship")

        await asyncio.to_thread(pg.stop, "immediate")
        await log.append_many(make_record(f"during-{i}") for i in range(700))
        assert not await shipper.stop(flush=True, timeout_s=1)
        assert log.pending_records == 700
        await log.close()  # the gateway exits with its backlog still local

        await asyncio.to_thread(pg.start)
        log = await UsageLog.open(directory)
        assert log.pending_records == 700
        shipper = UsageShipper(log, PostgresUsageStore(engine, timeout_s=5), interval_s=0.02)
        assert await shipper.flush(30)
        await log.close()
    finally:
        await engine.dispose()
    total, distinct, ids = await table_counts(pg.url)
    assert total == distinct == 1000
    assert {f"during-{i}" for i in range(700)} <= ids
