"""The adapter training queue's contract, run against Postgres and against the in-memory double
(so the double used by unit tests cannot drift from the real thing): idempotency keys, exclusive
claims, heartbeats that store progress, leases that run out and can no longer be finished by
their old holder, transient failures that back off then fail, permanent ones that fail at once,
and giving a job back without counting the attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.lineage import RegisteredAdapter
from attribution.training_jobs import (
    KeyReused,
    PostgresTrainingJobs,
    TrainingJobs,
    TrainingPolicy,
    TrainingRequest,
    is_job_id,
)
from attribution.training_jobs_memory import MemoryTrainingJobs

pytestmark = pytest.mark.integration

MakeJobs = Callable[[TrainingPolicy], TrainingJobs]
REQUEST = TrainingRequest(datanet="clauses", adapter="clauses", owner="builder", steps=20)
ADAPTER = RegisteredAdapter(
    id=1, name="clauses", base_model="royalty-tiny", base_weights_sha256="b" * 64,
    owner_account_id=7, owner="builder", datanet_id=3, datanet="clauses",
    snapshot_id="s" * 64, path="/adapters/clauses", weights_sha256="w" * 64,
    lineage_sha256="l" * 64, record_count=12, price_input_micros=None,
    price_output_micros=None, metadata={"span_index": "/x"}, status="active",
    created_at="2026-12-08T00:00:00Z", created=1_796_688_000,
)  # fmt: skip


@pytest.fixture(params=["postgres", "memory"])
def make_jobs(request: pytest.FixtureRequest) -> MakeJobs:
    if request.param == "memory":
        return lambda policy: MemoryTrainingJobs(policy)
    engine: AsyncEngine = request.getfixturevalue("engine")  # a fresh migrated database
    return lambda policy: PostgresTrainingJobs(engine, policy)


async def test_enqueue_and_idempotency_keys(make_jobs: MakeJobs) -> None:
    q = make_jobs(TrainingPolicy())
    first = await q.enqueue(REQUEST, idempotency_key="k-1")
    assert not first.replayed and is_job_id(first.job.id)
    job = first.job
    assert (job.state, job.attempts, job.step, job.loss, job.result) == ("queued", 0, 0, None, None)
    assert job.request == REQUEST
    again = await q.enqueue(REQUEST, idempotency_key="k-1")
    assert again.replayed and again.job.id == job.id
    with pytest.raises(KeyReused):
        await q.enqueue(
            TrainingRequest("clauses", "clauses", "builder", steps=21), idempotency_key="k-1"
        )
    # Without a key every request is a new job.
    a, b = await q.enqueue(REQUEST), await q.enqueue(REQUEST)
    assert len({job.id, a.job.id, b.job.id}) == 3
    assert await q.get(job.id) == job
    assert await q.get("ftjob-0000000000000000") is None
    assert await q.get("not a job id") is None
    counts = await q.counts()
    assert counts.by_state == {"queued": 3, "running": 0, "succeeded": 0, "failed": 0}
    assert counts.depth == 3 and counts.oldest_queued_s is not None


async def test_claims_are_exclusive_and_progress_is_stored(make_jobs: MakeJobs) -> None:
    q = make_jobs(TrainingPolicy())
    one = (await q.enqueue(REQUEST)).job
    two = (await q.enqueue(REQUEST)).job
    a, b = await q.claim("w1"), await q.claim("w2")
    assert a is not None and b is not None
    assert (a.id, b.id) == (one.id, two.id), "oldest first"
    assert await q.claim("w3") is None
    assert a.state == "running" and a.attempts == 1 and a.locked_by == "w1"
    assert await q.heartbeat("w1", a.id, step=5, loss=1.25)
    assert not await q.heartbeat("w2", a.id, step=6)  # not the holder
    seen = await q.get(a.id)
    assert seen is not None and (seen.step, seen.loss) == (5, 1.25)
    assert await q.heartbeat("w1", a.id)  # a beat without progress keeps it
    seen = await q.get(a.id)
    assert seen is not None and (seen.step, seen.loss) == (5, 1.25)

    assert not await q.succeed("w2", a.id, ADAPTER)
    assert await q.succeed("w1", a.id, ADAPTER, step=20, loss=0.5)  # the last steps' progress
    assert not await q.succeed("w1", a.id, ADAPTER)  # finished already
    done = await q.get(a.id)
    assert done is not None and done.state == "succeeded" and done.result == ADAPTER
    assert (done.step, done.loss) == (20, 0.5)
    assert done.locked_by is None and done.error is None
    assert (await q.counts()).by_state == {"queued": 0, "running": 1, "succeeded": 1, "failed": 0}


async def test_a_lease_that_runs_out_goes_to_the_next_worker(make_jobs: MakeJobs) -> None:
    q = make_jobs(TrainingPolicy(lease_s=0.5))
    job = (await q.enqueue(REQUEST)).job
    first = await q.claim("doomed")
    assert first is not None and first.id == job.id
    assert await q.heartbeat("doomed", job.id, step=3, loss=2.0)
    assert await q.claim("thief") is None  # leased
    await asyncio.sleep(0.7)
    taken = await q.claim("survivor")
    assert taken is not None and taken.id == job.id and taken.attempts == 2
    assert (taken.step, taken.loss) == (0, None), "a new attempt starts from step 0"
    # The old holder can change nothing any more.
    assert not await q.heartbeat("doomed", job.id, step=9)
    assert not await q.succeed("doomed", job.id, ADAPTER)
    assert await q.fail("doomed", job.id, "late", error_type="X", permanent=True) is None
    assert not await q.release("doomed", job.id)
    assert await q.succeed("survivor", job.id, ADAPTER)


async def test_transient_failures_back_off_then_fail(make_jobs: MakeJobs) -> None:
    q = make_jobs(TrainingPolicy(max_attempts=2, backoff_base_s=0.4, backoff_cap_s=0.4))
    job = (await q.enqueue(REQUEST)).job
    claimed = await q.claim("w1")
    assert claimed is not None
    state = await q.fail("w1", job.id, "connection reset", error_type="OSError", permanent=False)
    assert state == "queued"
    waiting = await q.get(job.id)
    assert waiting is not None and waiting.error == "connection reset"
    assert await q.claim("w1") is None  # backing off
    await asyncio.sleep(0.5)
    claimed = await q.claim("w1")
    assert claimed is not None and claimed.attempts == 2
    state = await q.fail("w1", job.id, "again\x00", error_type="OSError", permanent=False)
    assert state == "failed"
    failed = await q.get(job.id)
    assert failed is not None and failed.state == "failed"
    assert (failed.error, failed.error_type) == ("again", "OSError")  # storable text
    assert await q.claim("w1") is None


async def test_a_permanent_failure_fails_at_once(make_jobs: MakeJobs) -> None:
    q = make_jobs(TrainingPolicy(max_attempts=5))
    job = (await q.enqueue(REQUEST)).job
    assert await q.claim("w1") is not None
    error = "no datanet named 'clauses'"
    assert await q.fail("w1", job.id, error, error_type="NotFound", permanent=True) == "failed"
    failed = await q.get(job.id)
    assert failed is not None and (failed.state, failed.attempts) == ("failed", 1)
    assert (failed.error, failed.error_type) == (error, "NotFound")
    assert await q.claim("w1") is None


async def test_release_gives_the_job_back_without_counting(make_jobs: MakeJobs) -> None:
    q = make_jobs(TrainingPolicy())
    job = (await q.enqueue(REQUEST)).job
    assert await q.claim("stopping") is not None
    assert await q.release("stopping", job.id)
    again = await q.claim("next")
    assert again is not None and again.id == job.id and again.attempts == 1
