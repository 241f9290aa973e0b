"""PostgresUsageStore against a real database: COPY, idempotent replays, racing shippers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event

from metering.usage.log import UsageLog
from metering.usage.record import USAGE_COLUMNS, UsageRecord
from metering.usage.shipper import UsageShipper
from metering.usage.store import PostgresUsageStore, UsageRejected, UsageStoreUnavailable
from royalty.db import create_engine

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
SELECT_ALL = f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage_events ORDER BY request_id"  # noqa: S608
COUNTS = "SELECT count(*), count(DISTINCT request_id) FROM usage_events"


def make_record(i: int, prefix: str = "req") -> UsageRecord:
    return usage_event(
        f"{prefix}-{i:08d}",
        account_id=1 + i % 5,
        key_id=100 + i % 3,
        endpoint="chat.completions" if i % 2 else "completions",
        model="tiny-base:lora-a" if i % 3 == 0 else "tiny-base",
        base_model="tiny-base",
        adapter="lora-a" if i % 3 == 0 else None,
        status="ok" if i % 7 else "client_cancelled",
        http_status=200 if i % 7 else 499,
        prompt_tokens=i % 4096,
        completion_tokens=(3 * i) % 512,
        started_at=T0 + dt.timedelta(microseconds=1001 * i),
        total_ms=10.0 + i / 8,
        ttft_ms=None if i % 4 == 0 else 1.5 + i % 10,
        output_sha256=None if i % 7 == 0 else f"{i:064x}",
        error_type=None if i % 7 else "ClientDisconnected",
        engine=None if i % 11 == 0 else f"engine-{i % 2}",
    )


async def fetch_rows(engine: AsyncEngine) -> list[UsageRecord]:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection
        rows = await driver.fetch(SELECT_ALL)
    return [UsageRecord(**dict(row)) for row in rows]


async def counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection
        row = await driver.fetchrow(COUNTS)
    assert row is not None
    return row[0], row[1]


async def test_copy_insert_round_trips_every_column(engine: AsyncEngine) -> None:
    store = PostgresUsageStore(engine)
    records = [make_record(i) for i in range(5000)]
    started = time.perf_counter()
    assert await store.insert_batch(records) == 5000
    elapsed = time.perf_counter() - started
    assert await store.count() == 5000
    assert await fetch_rows(engine) == sorted(records, key=lambda r: r.request_id)
    assert elapsed < 10, f"a 5000-record batch took {elapsed:.2f}s"


async def test_replays_are_harmless(engine: AsyncEngine) -> None:
    store = PostgresUsageStore(engine)
    records = [make_record(i) for i in range(300)]
    assert await store.insert_batch(records[:200]) == 200
    assert await store.insert_batch(records[:200]) == 0
    assert await store.insert_batch(records[100:]) == 100
    assert await store.insert_batch([records[0], records[0], make_record(999)]) == 1
    assert await store.insert_batch([make_record(1000), make_record(1000)]) == 1
    assert await store.insert_batch([]) == 0
    assert await counts(engine) == (302, 302)


async def test_a_replay_never_overwrites_the_stored_row(engine: AsyncEngine) -> None:
    store = PostgresUsageStore(engine)
    original = make_record(1)
    await store.insert_batch([original])
    changed = UsageRecord(**{**{f: getattr(original, f) for f in USAGE_COLUMNS}, "model": "x"})
    assert await store.insert_batch([changed]) == 0
    assert await fetch_rows(engine) == [original]


async def test_a_rejected_batch_inserts_nothing(engine: AsyncEngine) -> None:
    store = PostgresUsageStore(engine)
    bad = UsageRecord(
        **{**{f: getattr(make_record(2), f) for f in USAGE_COLUMNS}, "prompt_tokens": -1}
    )
    with pytest.raises(UsageRejected) as rejected:
        await store.insert_batch([make_record(1), bad])
    assert isinstance(rejected.value.__cause__, asyncpg.CheckViolationError)
    assert rejected.value.sqlstate == "23514"  # the shipper isolates and dead-letters it
    assert await store.count() == 0
    # Not an outage, and the connection it used is still good for the next batch.
    assert await store.insert_batch([make_record(1)]) == 1


async def test_unreachable_server_is_unavailable() -> None:
    with socket_closed_port() as port:
        engine = create_engine(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        try:
            store = PostgresUsageStore(engine, timeout_s=5)
            with pytest.raises(UsageStoreUnavailable):
                await store.insert_batch([make_record(1)])
            with pytest.raises(UsageStoreUnavailable):
                await store.count()
        finally:
            await engine.dispose()


async def test_concurrent_batches_over_the_same_rows(engine: AsyncEngine) -> None:
    store = PostgresUsageStore(engine)
    records = [make_record(i) for i in range(4000)]
    rng = random.Random(7)

    async def one_writer(seed: int) -> int:
        # Differently cut and ordered batches: lock order must not depend on batch order.
        mine = records[:]
        random.Random(seed).shuffle(mine)
        total = 0
        i = 0
        while i < len(mine):
            n = rng.randint(50, 700)
            total += await store.insert_batch(mine[i : i + n])
            i += n
        return total

    inserted = await asyncio.gather(*(one_writer(s) for s in range(4)))
    assert sum(inserted) == 4000
    assert await counts(engine) == (4000, 4000)


async def test_two_shippers_racing_over_the_same_records(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    """Two logs holding the same records (e.g. a replica restored from another's backup),
    each with its own shipper and engine, race into one table."""
    records = [make_record(i) for i in range(6000)]
    logs = [await UsageLog.open(tmp_path / name, segment_bytes=64 << 10) for name in "ab"]
    engines = [create_engine(database_url, pool_size=2) for _ in logs]
    try:
        await logs[0].append_many(records)
        await logs[1].append_many(list(reversed(records)))
        shippers = [
            UsageShipper(log, PostgresUsageStore(eng), batch_size=size, interval_s=0.01)
            for log, eng, size in zip(logs, engines, (500, 777), strict=True)
        ]
        for s in shippers:
            s.start()
        results = await asyncio.gather(*(s.stop(timeout_s=60) for s in shippers))
        assert all(results)
    finally:
        for log in logs:
            await log.close()
        for eng in engines:
            await eng.dispose()
    assert all(s.shipped_total == 6000 for s in shippers)
    assert sum(s.inserted_total for s in shippers) == 6000
    assert await counts(engine) == (6000, 6000)
    assert await fetch_rows(engine) == sorted(records, key=lambda r: r.request_id)


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, never listened on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
