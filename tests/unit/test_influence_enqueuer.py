"""The influence enqueuer: the observer never blocks, jobs land once each in batches, an
unavailable queue keeps them buffered (retried with capped backoff), a full buffer drops
new jobs with a metric instead of growing, and a clean stop flushes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from attribution.influence.queue import NewJob
from attribution.influence.queue_memory import MemoryInfluenceQueue
from gateway.inference import CompletedResponse
from gateway.influence import InfluenceEnqueuer


def response(i: int, adapter: str = "recipes") -> CompletedResponse:
    return CompletedResponse(
        request_id=f"req-{i:06d}",
        account_id=7,
        adapter=adapter,
        endpoint="chat.completions",
        prompt=[{"role": "user", "content": f"question {i}"}],
        output=f"answer {i}",
        attribution={"snapshot_id": "s1", "contributors": [{"id": 3, "weight_ppm": 10**6}]},
    )


def dropped_metric() -> float:
    return REGISTRY.get_sample_value("royalty_influence_jobs_dropped_total") or 0.0


class AmbiguousQueue(MemoryInfluenceQueue):
    """Commits a batch and then reports a failure (a connection lost after COMMIT), once."""

    def __init__(self) -> None:
        super().__init__()
        self.ambiguous = 1
        self.delivered: list[str] = []

    async def enqueue(self, jobs: Sequence[NewJob]) -> int:
        n = await super().enqueue(jobs)
        self.delivered.extend(j.request_id for j in jobs)
        if self.ambiguous:
            self.ambiguous -= 1
            raise ConnectionResetError("connection lost after commit (test)")
        return n


async def wait_for(predicate, within_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_observing_only_buffers_and_flush_writes_batches_once_each() -> None:
    queue = MemoryInfluenceQueue()
    enq = InfluenceEnqueuer(queue, batch_size=100)
    started = time.perf_counter()
    for i in range(250):
        enq(response(i))
    enq(response(999, adapter=""))  # a base-model response has nothing to refine
    assert time.perf_counter() - started < 0.5
    assert queue.rows == {}  # nothing written on the caller's path
    assert len(enq) == 250
    assert await enq.flush()
    assert queue.enqueue_calls == 3  # 100 + 100 + 50
    assert len(queue.rows) == 250 and len(enq) == 0
    job = queue.rows["req-000007"].job
    assert job.adapter == "recipes" and job.account_id == 7
    assert job.prompt == [{"role": "user", "content": "question 7"}]
    assert job.output == "answer 7" and job.attribution is not None


async def test_an_unavailable_queue_keeps_jobs_buffered_and_they_land_after() -> None:
    queue = MemoryInfluenceQueue()
    queue.down = True
    enq = InfluenceEnqueuer(queue, batch_size=10, interval_s=0.01, max_backoff_s=0.1)
    enq.start()
    try:
        for i in range(35):
            enq(response(i))
        await wait_for(lambda: enq.failures_total >= 3)
        assert len(enq) == 35 and queue.rows == {}
        # Capped backoff: over 0.5 s at most ~0.5/0.1 + the doubling steps more attempts.
        before, t0 = enq.failures_total, time.monotonic()
        await asyncio.sleep(0.5)
        tries = enq.failures_total - before
        assert 1 <= tries <= (time.monotonic() - t0) / 0.1 + 4, tries
        for i in range(35, 40):  # responses keep coming during the outage
            enq(response(i))
        queue.down = False
        await wait_for(lambda: len(queue.rows) == 40, within_s=2.0)
        assert len(enq) == 0 and enq.dropped_total == 0
    finally:
        assert await enq.stop()


async def test_a_full_buffer_drops_new_jobs_with_a_metric_and_keeps_the_older_ones() -> None:
    queue = MemoryInfluenceQueue()
    queue.down = True
    enq = InfluenceEnqueuer(queue, max_buffer=20, batch_size=5)
    metric0 = dropped_metric()
    for i in range(50):
        enq(response(i))
    assert len(enq) == 20
    assert enq.dropped_total == 30
    assert dropped_metric() - metric0 == 30
    assert not await enq.flush()
    queue.down = False
    assert await enq.flush()
    assert sorted(queue.rows) == [f"req-{i:06d}" for i in range(20)]


async def test_a_batch_retried_after_an_ambiguous_failure_is_not_queued_twice() -> None:
    queue = AmbiguousQueue()
    enq = InfluenceEnqueuer(queue, batch_size=8)
    for i in range(20):
        enq(response(i))
    assert not await enq.flush()  # the first batch committed but the answer was lost
    assert await enq.flush()
    assert len(queue.delivered) == 28  # the first batch was sent twice ...
    assert len(queue.rows) == 20  # ... and queued once (idempotent by request id)
    assert all(r.attempts == 0 and r.state == "queued" for r in queue.rows.values())


async def test_stop_flushes_what_is_buffered_and_reports_what_it_could_not() -> None:
    queue = MemoryInfluenceQueue()
    enq = InfluenceEnqueuer(queue, batch_size=1000, interval_s=60)
    enq.start()
    for i in range(30):
        enq(response(i))
    assert await enq.stop(flush=True)
    assert len(queue.rows) == 30

    down = MemoryInfluenceQueue()
    down.down = True
    stuck = InfluenceEnqueuer(down, interval_s=60)
    stuck.start()
    stuck(response(1))
    assert not await stuck.stop(flush=True, timeout_s=0.2)
    assert len(stuck) == 1


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        InfluenceEnqueuer(MemoryInfluenceQueue(), max_buffer=0)
