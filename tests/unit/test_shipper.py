"""The shipper: cursor after commit, retries without loss, replays without duplicates."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from support.usage_events import usage_event

from metering.usage.log import UsageLog
from metering.usage.record import UsageRecord
from metering.usage.shipper import UsageShipper
from metering.usage.store import InMemoryUsageStore, UsageStore, UsageStoreUnavailable

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


# --- records the store can never take: split, dead-letter, go on -------------------------------
def dead_letter_metric(queue: str = "usage") -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("royalty_dead_letters_total", {"queue": queue}) or 0.0


async def test_without_isolation_one_poison_record_stops_every_record_behind_it(
    tmp_path: Path,
) -> None:
    """The defect: no dead-letter store, so the rejected batch is retried as a whole, forever."""
    store = InMemoryUsageStore()
    store.poison = {"req-00000003"}
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(make_record(i) for i in range(10))
        shipper = UsageShipper(log, store, batch_size=4, interval_s=0.001, max_backoff_s=0.01)
        assert not await shipper.flush(0.3)
        assert log.pending_records == 10
    assert await store.count() == 0


async def test_a_rejected_record_is_dead_lettered_and_everything_else_ships(
    tmp_path: Path,
) -> None:
    from core.deadletters import InMemoryDeadLetterStore
    from metering.usage.store import decode_dead_letter

    store = RecordingStore()
    dead = InMemoryDeadLetterStore()
    records = [make_record(i) for i in range(1000)]
    poison = {records[i].request_id for i in (3, 4, 517, 999)}  # two share a batch
    store.poison = poison
    before = dead_letter_metric()
    async with await UsageLog.open(tmp_path) as log:
        shipper = UsageShipper(
            log, store, batch_size=100, interval_s=0.001, max_backoff_s=0.01, dead_letters=dead
        )
        shipper.start()
        await log.append_many(records[:500])
        await log.append_many(records[500:])
        await wait_until_shipped(log)
        assert await shipper.stop()
    assert list(store.rows) == [r.request_id for r in records if r.request_id not in poison]
    letters = await dead.list()
    assert sorted(x.item_key for x in letters) == sorted(poison)
    assert {x.queue for x in letters} == {"usage"} and {x.state for x in letters} == {"dead"}
    by_id = {r.request_id: r for r in records}
    for x in letters:
        assert decode_dead_letter(x.payload) == by_id[x.item_key], "the exact record is kept"
        assert "poison" in x.error and x.sqlstate == "22021"
    assert shipper.dead_lettered_total == 4 and dead_letter_metric() - before == 4
    assert shipper.shipped_total == 1000 and shipper.inserted_total == 996
    assert shipper.failures_total == 0, "isolating a bad record is not a failed batch"
    # One bad record in a batch of 100 costs about 2 log2(100) inserts, not 100.
    assert store.insert_calls < 10 + 3 * 2 * 8


async def test_a_failed_dead_letter_write_moves_nothing_and_is_retried(tmp_path: Path) -> None:
    from core.deadletters import InMemoryDeadLetterStore

    store = RecordingStore()
    store.poison = {"req-00000002"}
    dead = InMemoryDeadLetterStore()
    dead.fail_next = 3
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(make_record(i) for i in range(8))
        shipper = UsageShipper(
            log, store, batch_size=8, interval_s=0.001, max_backoff_s=0.01, dead_letters=dead
        )
        with pytest.raises(ConnectionError):
            await shipper.ship_once()
        assert log.pending_records == 8, "no cursor move before the dead letter is durable"
        assert dead.rows == {}
        assert await shipper.flush(5)
    assert dead.put_calls == 4 and len(dead.rows) == 1
    assert await store.count() == 7
    assert shipper.failures_total == 3 and shipper.dead_lettered_total == 1


async def test_a_crash_after_dead_lettering_replays_without_a_second_letter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.deadletters import InMemoryDeadLetterStore

    store = RecordingStore()
    store.poison = {"req-00000005"}
    dead = InMemoryDeadLetterStore()
    before = dead_letter_metric()
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many(make_record(i) for i in range(10))
        real = log.mark_shipped
        failures = 1

        async def crash_before_cursor(cursor: object) -> None:
            nonlocal failures
            if failures:
                failures -= 1
                raise OSError("the process died before the cursor write")
            await real(cursor)  # type: ignore[arg-type]

        monkeypatch.setattr(log, "mark_shipped", crash_before_cursor)
        shipper = UsageShipper(
            log, store, batch_size=10, interval_s=0.001, max_backoff_s=0.01, dead_letters=dead
        )
        assert await shipper.flush(5)
    assert len(dead.rows) == 1 and dead.put_calls == 2
    assert dead_letter_metric() - before == 1, "the replayed put added nothing"
    assert await store.count() == 9
