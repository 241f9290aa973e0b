"""The influence job queue's contract, run against Postgres and against the in-memory double
(so the double used by unit tests cannot drift from the real thing): idempotent enqueue,
exclusive claims, leases that run out and can no longer be finished by their old holder,
backoff then `failed`, postponing that does not count, month expiry, and the text retention
(deleted as a job finishes, or by the sweep past its expiry, in any state). Plus the gateway's
enqueuer across a real PostgreSQL outage."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.influence.queue import (
    TEXT_EXPIRED,
    InfluenceQueue,
    JobResult,
    NewJob,
    PostgresInfluenceQueue,
    QueuePolicy,
)
from attribution.influence.queue_memory import MemoryInfluenceQueue
from gateway.inference import CompletedResponse
from gateway.influence import InfluenceEnqueuer
from royalty.db import create_engine, migrate

if TYPE_CHECKING:
    from support.pg import PrivatePostgres

pytestmark = pytest.mark.integration

MakeQueue = Callable[[QueuePolicy], InfluenceQueue]
OCT = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
NOV = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
RESULT = JobResult(
    method="fake/1", weights_version="royalty-weights/1", refined_method="influence",
    top_records=[{"id": 1, "contributor": 5, "score": 2.0}],
    contributors=[{"id": 5, "weight": 1.0, "weight_ppm": 1_000_000}], seconds=0.01,
    adjustment_txn=None,
)  # fmt: skip


def job(i: int, created: dt.datetime | None = None) -> NewJob:
    # "Now" when the job is made, not when the module was imported: a long suite would age
    # module-level times past the text retention the sweep tests use.
    created = created or dt.datetime.now(dt.UTC)
    return NewJob(
        request_id=f"r{i:04d}", adapter="recipes", account_id=1,
        prompt=[{"role": "user", "content": f"secret prompt {i}"}], output=f"secret output {i}",
        attribution={"snapshot_id": "s1"}, created_at=created,
    )  # fmt: skip


@pytest.fixture(params=["postgres", "memory"])
def make_queue(request: pytest.FixtureRequest) -> MakeQueue:
    if request.param == "memory":
        return lambda policy: MemoryInfluenceQueue(policy)
    engine: AsyncEngine = request.getfixturevalue("engine")  # a fresh migrated database
    return lambda policy: PostgresInfluenceQueue(engine, policy)


async def test_enqueue_is_idempotent_and_claims_are_exclusive(make_queue: MakeQueue) -> None:
    q = make_queue(QueuePolicy())
    assert await q.enqueue([job(i) for i in range(5)]) == 5
    assert await q.enqueue([job(i) for i in range(3, 7)]) == 2  # r0003, r0004 already there
    first = await q.claim("w1", limit=4)
    second = await q.claim("w2", limit=10)
    assert len(first) == 4 and len(second) == 3
    assert {j.request_id for j in first}.isdisjoint({j.request_id for j in second})
    assert await q.claim("w3", limit=10) == []
    got = first[0]
    assert got.attempts == 1 and got.month == dt.datetime.now(dt.UTC).date().replace(day=1)
    assert got.prompt == [{"role": "user", "content": f"secret prompt {int(got.request_id[1:])}"}]
    assert got.attribution == {"snapshot_id": "s1"}
    counts = await q.counts()
    assert counts.by_state["running"] == 7 and counts.depth == 7 == await q.depth()


async def test_complete_stores_the_result_and_deletes_the_text(make_queue: MakeQueue) -> None:
    q = make_queue(QueuePolicy())
    await q.enqueue([job(1), job(2)])
    a, b = await q.claim("w1", limit=2)
    assert not await q.complete("someone-else", a.request_id, RESULT)
    assert await q.complete("w1", a.request_id, RESULT)
    assert not await q.complete("w1", a.request_id, RESULT)  # finished already
    view = await q.view(a.request_id)
    assert view is not None and view.state == "done" and not view.has_text
    assert view.result == RESULT
    assert await q.finish("w1", b.request_id, "done", note="no influence index")
    view = await q.view(b.request_id)
    assert view is not None and view.note == "no influence index" and not view.has_text
    assert view.result is None
    assert await q.view("nope") is None


async def test_a_configured_retention_keeps_text_until_the_sweep(make_queue: MakeQueue) -> None:
    q = make_queue(QueuePolicy(retention_s=1.0))
    await q.enqueue([job(1)])
    (j,) = await q.claim("w1")
    assert await q.complete("w1", j.request_id, RESULT)
    assert await q.sweep() == 0
    assert (await q.view(j.request_id)).has_text  # type: ignore[union-attr]
    await asyncio.sleep(1.1)
    assert await q.sweep() == 1
    view = await q.view(j.request_id)
    assert view is not None and not view.has_text and view.state == "done"


async def test_the_sweep_deletes_old_text_in_any_state(make_queue: MakeQueue) -> None:
    q = make_queue(QueuePolicy(max_text_age_s=60, max_attempts=1))
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    await q.enqueue([job(1, old), job(2, old), job(3)])
    (failed,) = await q.claim("w1", limit=1)
    # A last failed attempt finishes the job: its text goes then too (retention 0).
    assert await q.fail("w1", failed.request_id, "boom") == "failed"
    assert not (await q.view(failed.request_id)).has_text  # type: ignore[union-attr]
    assert await q.sweep() == 1  # the other old, still queued one
    views = {i: await q.view(f"r{i:04d}") for i in (1, 2, 3)}
    stale = next(v for v in views.values() if v and v.request_id != failed.request_id
                 and v.request_id != "r0003")  # fmt: skip
    assert stale.state == "expired" and stale.last_error == TEXT_EXPIRED and not stale.has_text
    assert views[3] is not None and views[3].state == "queued" and views[3].has_text


async def test_failures_back_off_then_fail_and_postponing_does_not_count(
    make_queue: MakeQueue,
) -> None:
    q = make_queue(QueuePolicy(max_attempts=2, backoff_base_s=0.5, backoff_cap_s=0.5))
    await q.enqueue([job(1)])
    (j,) = await q.claim("w1")
    assert await q.postpone("w1", j.request_id, 0.0, "usage event not posted yet")
    (j,) = await q.claim("w1")
    assert j.attempts == 1  # the postponed try did not count
    assert await q.fail("w1", j.request_id, "scorer crashed") == "queued"
    assert await q.claim("w1") == []  # backing off
    await asyncio.sleep(0.6)
    (j,) = await q.claim("w1")
    assert j.attempts == 2
    assert await q.fail("w1", j.request_id, "scorer crashed again") == "failed"
    view = await q.view(j.request_id)
    assert view is not None and view.state == "failed" and view.last_error == "scorer crashed again"
    assert not view.has_text
    assert await q.claim("w1") == []


async def test_a_lease_that_runs_out_moves_the_job_to_another_worker(
    make_queue: MakeQueue,
) -> None:
    q = make_queue(QueuePolicy(lease_s=0.8))
    await q.enqueue([job(1)])
    (j,) = await q.claim("w1")
    await asyncio.sleep(0.4)
    assert await q.heartbeat("w1", [j.request_id]) == 1
    await asyncio.sleep(0.5)
    assert await q.claim("w2") == []  # the heartbeat kept it
    await asyncio.sleep(0.9)  # w1 went silent (killed): the lease runs out
    (again,) = await q.claim("w2")
    assert again.request_id == j.request_id and again.attempts == 2
    assert again.prompt is not None  # nothing lost
    assert await q.heartbeat("w1", [j.request_id]) == 0
    assert not await q.complete("w1", j.request_id, RESULT)  # too late for w1
    assert not await q.fail("w1", j.request_id, "x") == "queued"
    assert await q.complete("w2", j.request_id, RESULT)


async def test_expiring_a_month_leaves_later_months_and_live_leases(
    make_queue: MakeQueue,
) -> None:
    q = make_queue(QueuePolicy(lease_s=30, max_text_age_s=365 * 86400))
    await q.enqueue([job(1, OCT), job(2, OCT), job(3, NOV)])
    (held,) = await q.claim("w1", month=OCT.date())
    assert held.month == OCT.date().replace(day=1)
    assert await q.claim("w2", month=dt.date(2026, 9, 1)) == []
    assert await q.expire_month(OCT.date().replace(day=1), "closed without influence") == 1
    states = {i: (await q.view(f"r{i:04d}")).state for i in (1, 2, 3)}  # type: ignore[union-attr]
    assert sorted(states.values()) == ["expired", "queued", "running"]
    assert states[3] == "queued"
    oct_counts = await q.counts(month=OCT.date().replace(day=1))
    assert oct_counts.depth == 1 and oct_counts.by_state["expired"] == 1
    all_counts = await q.counts()
    assert all_counts.depth == 2 and all_counts.oldest_queued_s is not None


async def test_a_job_belongs_to_the_month_its_response_started_in(make_queue: MakeQueue) -> None:
    # Started 23:59:59 on Oct 31, queued just after midnight: its credits post to October, so
    # October's close must run it, and it must not wait for November's.
    q = make_queue(QueuePolicy(lease_s=30, max_text_age_s=365 * 86400))
    late = dt.datetime(2026, 10, 31, 23, 59, 59, tzinfo=dt.UTC)
    queued = dt.datetime(2026, 11, 1, 0, 0, 1, tzinfo=dt.UTC)
    await q.enqueue([dataclasses.replace(job(1, queued), started_at=late), job(2, queued)])
    october = dt.date(2026, 10, 1)
    assert (await q.counts(month=october)).depth == 1
    (claimed,) = await q.claim("w1", month=october)
    assert claimed.request_id == "r0001" and claimed.month == october
    assert await q.claim("w1", month=october) == []  # r0002 is November's


def response(i: int) -> CompletedResponse:
    return CompletedResponse(
        request_id=f"out-{i:05d}", account_id=1, adapter="recipes", endpoint="completions",
        prompt="Recipe:", output=f"soup {i}", attribution=None,
    )  # fmt: skip


async def _count(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        n, distinct = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT request_id) FROM influence_jobs"
        )
        return int(n), int(distinct)
    finally:
        await conn.close()


async def _wait(predicate: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_enqueuer_keeps_jobs_through_a_postgres_outage(
    private_postgres: PrivatePostgres,
) -> None:
    pg = private_postgres
    engine = create_engine(pg.url, pool_size=2)
    await migrate(engine)
    enq = InfluenceEnqueuer(
        PostgresInfluenceQueue(engine), batch_size=50, interval_s=0.02, max_backoff_s=0.3,
        timeout_s=2.0,
    )  # fmt: skip
    enq.start()
    try:
        for i in range(100):
            enq(response(i))
        await _wait(lambda: enq.enqueued_total == 100, 10)

        await asyncio.to_thread(pg.stop, "immediate")  # a crash: connections cut
        for i in range(100, 250):
            enq(response(i))
        await _wait(lambda: enq.failures_total >= 2, 10)
        assert len(enq) == 150, "jobs answered during the outage are kept in memory"

        await asyncio.to_thread(pg.start)
        await _wait(lambda: len(enq) == 0, 20)
    finally:
        flushed = await enq.stop(flush=True)
        await engine.dispose()
    assert flushed and enq.dropped_total == 0
    assert await _count(pg.url) == (250, 250)
