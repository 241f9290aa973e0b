"""The shipper: cursor after commit, retries without loss, replays without duplicates."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from usage_events import usage_event

from metering.shipper import UsageShipper
from metering.usage import UsageRecord
from metering.usage_log import UsageLog
from metering.usage_store import InMemoryUsageStore, UsageStore, UsageStoreUnavailable

T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def make_record(i: int, prefix: str = "req") -> UsageRecord:
    return usage_event(
        f"{prefix}-{i:08d}", account_id=1, started_at=T0 + dt.timedelta(seconds=i), adapter=None,
        base_model="tiny-base", prompt_tokens=i % 100, completion_tokens=i % 50,
    )  # fmt: skip


class RecordingStore(InMemoryUsageStore):
    """Also remembers every delivery, so duplicates at the store boundary are visible."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[str] = []
        self.call_times: list[float] = []

    async def insert_batch(self, records: Sequence[UsageRecord]) -> int:
        self.call_times.append(time.monotonic())
        n = await super().insert_batch(records)
        self.delivered.extend(r.request_id for r in records)
        return n


async def wait_until_shipped(log: UsageLog, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while log.pending_records:
        assert time.monotonic() < deadline, f"{log.pending_records} records never shipped"
        await asyncio.sleep(0.01)


async def test_ships_everything_in_order(tmp_path: Path) -> None:
    store = RecordingStore()
    records = [make_record(i) for i in range(1234)]
    async with await UsageLog.open(tmp_path) as log:
        shipper = UsageShipper(log, store, batch_size=100, interval_s=0.01)
        shipper.start()
        await log.append_many(records[:600])
        await asyncio.gather(*(log.append(r) for r in records[600:]))
        await wait_until_shipped(log)
        assert await shipper.stop()
    assert list(store.rows) == [r.request_id for r in records]
    assert list(store.rows.values()) == records
    assert shipper.shipped_total == shipper.inserted_total == 1234
    assert shipper.failures_total == 0


async def test_crash_between_insert_and_cursor_write_replays_without_duplicates(
    tmp_path: Path,
) -> None:
    store = RecordingStore()
    records = [make_record(i) for i in range(50)]
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(records)
        # The batch commits, then the process dies before mark_shipped.
        batch, _cursor = await log.read_unshipped(30)
        assert await store.insert_batch(batch) == 30
    async with await UsageLog.open(tmp_path) as log:
        assert log.pending_records == 50, "the cursor never moved, so all 50 are pending"
        shipper = UsageShipper(log, store, batch_size=20, interval_s=0.01)
        assert await shipper.flush(5)
    assert await store.count() == 50
    assert list(store.rows.values()) == records
    assert shipper.shipped_total == 50
    assert shipper.inserted_total == 20, "the 30 replayed rows were no-ops"
    assert store.delivered.count(records[0].request_id) == 2


async def test_failed_cursor_write_is_retried_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RecordingStore()
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(make_record(i) for i in range(40))
        real = log.mark_shipped
        failures = 3

        async def flaky_mark_shipped(cursor: object) -> None:
            nonlocal failures
            if failures:
                failures -= 1
                raise OSError("disk hiccup writing the cursor")
            await real(cursor)  # type: ignore[arg-type]

        monkeypatch.setattr(log, "mark_shipped", flaky_mark_shipped)
        shipper = UsageShipper(log, store, batch_size=15, interval_s=0.001, max_backoff_s=0.01)
        assert await shipper.flush(5)
        assert log.pending_records == 0
    assert await store.count() == 40
    assert shipper.failures_total == 3
    assert shipper.shipped_total == 40
    assert shipper.inserted_total == 25, "the first batch landed before its cursor write failed"
    assert len(store.delivered) == 40 + 3 * 15


async def test_store_outage_then_recovery_ships_each_record_once(tmp_path: Path) -> None:
    store = RecordingStore()
    store.fail_next = 7
    records = [make_record(i) for i in range(300)]
    async with await UsageLog.open(tmp_path) as log:
        shipper = UsageShipper(log, store, batch_size=64, interval_s=0.001, max_backoff_s=0.02)
        shipper.start()
        for i in range(0, 300, 10):
            await log.append_many(records[i : i + 10])
        await wait_until_shipped(log)
        assert await shipper.stop()
    assert shipper.failures_total == 7
    assert "injected outage" in (shipper.last_error or "")
    assert shipper.consecutive_failures == 0
    assert list(store.rows.values()) == records
    assert len(store.delivered) == len(set(store.delivered)) == 300


async def test_lost_commit_acknowledgement_is_replayed_harmlessly(tmp_path: Path) -> None:
    store = RecordingStore()
    store.fail_after_commit = 2  # committed, but the shipper only saw an error
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(make_record(i) for i in range(100))
        shipper = UsageShipper(log, store, batch_size=30, interval_s=0.001, max_backoff_s=0.01)
        assert await shipper.flush(5)
    assert await store.count() == 100
    assert store.insert_calls == 4 + 2, "two batches were delivered twice"
    assert shipper.inserted_total == 70, "the first batch committed before any ack arrived"


async def test_backoff_grows_and_is_capped(tmp_path: Path) -> None:
    store = RecordingStore()
    store.fail_next = 10**9
    async with await UsageLog.open(tmp_path) as log:
        await log.append(make_record(1))
        shipper = UsageShipper(log, store, interval_s=0.01, max_backoff_s=0.08)
        shipper.start()
        await asyncio.sleep(0.8)
        await shipper.stop(flush=False)
        assert log.pending_records == 1, "a failing store must never cost a record"
    gaps = [b - a for a, b in zip(store.call_times, store.call_times[1:], strict=False)]
    # Uncapped doubling would reach 0.32 s within this window; capped, gaps stay near 0.08.
    assert max(gaps) < 0.25, "backoff is capped"
    assert gaps[0] < gaps[-1], "backoff grows"
    assert sum(1 for g in gaps if g >= 0.07) >= 3, "backoff reached the cap"
    assert 6 <= len(store.call_times) <= 20


async def test_unexpected_errors_are_retried_not_dropped(tmp_path: Path) -> None:
    class BrokenOnce(InMemoryUsageStore):
        broken = True

        async def insert_batch(self, records: Sequence[UsageRecord]) -> int:
            if self.broken:
                self.broken = False
                raise ValueError("a bug, not an outage")
            return await super().insert_batch(records)

    store = BrokenOnce()
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(make_record(i) for i in range(10))
        shipper = UsageShipper(log, store, interval_s=0.001)
        shipper.start()
        await wait_until_shipped(log)
        assert shipper.running, "the background loop survives unexpected errors"
        await shipper.stop()
    assert await store.count() == 10
    assert shipper.failures_total == 1
    assert (shipper.last_error or "").startswith("ValueError")


async def test_flush_gives_up_at_the_deadline_and_keeps_records(tmp_path: Path) -> None:
    store = InMemoryUsageStore()
    store.fail_next = 10**9
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(make_record(i) for i in range(25))
        shipper = UsageShipper(log, store, interval_s=0.01, max_backoff_s=0.05)
        shipper.start()
        started = time.monotonic()
        assert not await shipper.stop(flush=True, timeout_s=0.3)
        assert time.monotonic() - started < 2
        assert log.pending_records == 25
    # The next process ships them.
    healthy = InMemoryUsageStore()
    async with await UsageLog.open(tmp_path) as log:
        assert await UsageShipper(log, healthy).flush(5)
    assert await healthy.count() == 25


async def test_stop_flushes_records_appended_just_before(tmp_path: Path) -> None:
    store = InMemoryUsageStore()
    async with await UsageLog.open(tmp_path) as log:
        shipper = UsageShipper(log, store, interval_s=60)  # the loop alone would not ship
        shipper.start()
        await asyncio.sleep(0.01)
        await log.append_many(make_record(i) for i in range(77))
        started = time.monotonic()
        assert await shipper.stop(flush=True, timeout_s=5)
        assert time.monotonic() - started < 1, "stop must not wait out the poll interval"
        assert not shipper.running
    assert await store.count() == 77


async def test_stop_during_a_batch_does_not_wait_out_the_interval(tmp_path: Path) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    class SlowStore(InMemoryUsageStore):
        async def insert_batch(self, records: Sequence[UsageRecord]) -> int:
            entered.set()
            await release.wait()
            return await super().insert_batch(records)

    store = SlowStore()
    async with await UsageLog.open(tmp_path) as log:
        await log.append(make_record(1))
        shipper = UsageShipper(log, store, interval_s=60)
        shipper.start()
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.create_task(shipper.stop(flush=False))
        await asyncio.sleep(0.01)
        release.set()
        done, _ = await asyncio.wait([stopping], timeout=2)
        assert stopping in done, "stop() waited out the 60 s poll interval"
        assert stopping.result()
    assert await store.count() == 1


async def test_two_shippers_racing_on_one_log(tmp_path: Path) -> None:
    store = RecordingStore()
    records = [make_record(i) for i in range(2000)]
    async with await UsageLog.open(tmp_path, segment_bytes=4096) as log:
        a = UsageShipper(log, store, batch_size=37, interval_s=0.001)
        b = UsageShipper(log, store, batch_size=53, interval_s=0.001)
        a.start()
        b.start()
        for i in range(0, 2000, 25):
            await log.append_many(records[i : i + 25])
        await wait_until_shipped(log)
        await asyncio.gather(a.stop(), b.stop())
        assert log.segment_ids == [max(log.segment_ids)] or len(log.segment_ids) <= 2
    assert list(store.rows.values()) == records
    assert a.inserted_total + b.inserted_total == 2000


async def test_concurrent_appends_while_shipping_with_outages(tmp_path: Path) -> None:
    store = RecordingStore()
    async with await UsageLog.open(tmp_path, segment_bytes=8192) as log:
        shipper = UsageShipper(log, store, batch_size=50, interval_s=0.001, max_backoff_s=0.01)
        shipper.start()
        acked: list[str] = []

        async def appender(w: int) -> None:
            for i in range(150):
                r = make_record(i, prefix=f"w{w}")
                await log.append(r)
                acked.append(r.request_id)
                if i % 40 == 0:
                    store.fail_next += 2

        await asyncio.gather(*(appender(w) for w in range(8)))
        assert await shipper.stop(timeout_s=10)
    assert sorted(store.rows) == sorted(acked)
    assert len(acked) == 1200
    assert shipper.failures_total > 0


def test_in_memory_store_satisfies_the_protocol() -> None:
    assert isinstance(InMemoryUsageStore(), UsageStore)


async def test_in_memory_store_deduplicates() -> None:
    store = InMemoryUsageStore()
    a, b = make_record(1), make_record(2)
    assert await store.insert_batch([a, b, a]) == 2
    assert await store.insert_batch([b]) == 0
    store.fail_next = 1
    with pytest.raises(UsageStoreUnavailable):
        await store.insert_batch([make_record(3)])
    assert await store.count() == 2
