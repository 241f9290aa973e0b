"""The training worker over the in-memory queue with a stub trainer (steps in a thread, as
torch does): progress reaches the job while it trains; permanent failures (no datanet, a bad
snapshot, a taken name) fail at once with a readable error, transient ones back off and fail
after the last attempt; a worker that lost its lease stops training and reports nothing; a job
that keeps losing its worker is given up; a stopped worker gives its job back."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time

import asyncpg
import pytest

from attribution.errors import Conflict, Invalid, NotFound
from attribution.lineage import RegisteredAdapter
from attribution.training_jobs import TrainingJob, TrainingPolicy, TrainingRequest
from attribution.training_jobs_memory import MemoryTrainingJobs
from royalty.workers.training import (
    OnStep,
    Trainer,
    TrainingWorker,
    error_of,
    is_permanent_failure,
)

REQUEST = TrainingRequest(datanet="clauses", adapter="clauses", owner="builder", steps=5)
ADAPTER = RegisteredAdapter(
    id=1, name="clauses", base_model="royalty-tiny", base_weights_sha256="b" * 64,
    owner_account_id=7, owner="builder", datanet_id=3, datanet="clauses",
    snapshot_id="s" * 64, path="/adapters/clauses", weights_sha256="w" * 64,
    lineage_sha256="l" * 64, record_count=12, price_input_micros=None,
    price_output_micros=None, metadata={}, status="active",
    created_at="2026-12-08T00:00:00Z", created=1_796_688_000,
)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 8, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, s: float) -> None:
        self.now += dt.timedelta(seconds=s)


def stub_trainer(
    steps: int = 5,
    step_s: float = 0.0,
    fail: BaseException | None = None,
    gate: threading.Event | None = None,
) -> Trainer:
    """Steps in a thread, calling `on_step` like the training loop; waits for `gate` before
    each step when given; then raises `fail` or returns the adapter."""

    async def train(job: TrainingJob, on_step: OnStep) -> RegisteredAdapter:
        def loop() -> None:
            for i in range(1, steps + 1):
                if gate is not None:
                    assert gate.wait(10), "the test never opened the gate"
                time.sleep(step_s)
                on_step(i, 1.0 / i)

        await asyncio.to_thread(loop)
        if fail is not None:
            raise fail
        return ADAPTER

    return train


async def wait_for_state(q: MemoryTrainingJobs, job_id: str, state: str) -> None:
    for _ in range(1000):
        current = await q.get(job_id)
        if current is not None and current.state == state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} never became {state}")


async def test_a_job_trains_with_progress_and_succeeds() -> None:
    q = MemoryTrainingJobs()
    job = (await q.enqueue(REQUEST)).job
    worker = TrainingWorker(q, stub_trainer(steps=8, step_s=0.05), name="w", progress_every_s=0.05)
    task = asyncio.create_task(worker.run_once())
    seen: set[int] = set()
    while not task.done():
        current = await q.get(job.id)
        assert current is not None
        seen.add(current.step)
        await asyncio.sleep(0.02)
    assert task.result() == "succeeded"
    assert len(seen - {0}) >= 2, f"progress was never stored while training: {seen}"
    done = await q.get(job.id)
    assert done is not None and done.state == "succeeded" and done.result == ADAPTER
    assert await worker.run_once() is None


@pytest.mark.parametrize(
    "error",
    [
        NotFound("no datanet named 'clauses'"),
        Invalid("datanet 'clauses' has no published snapshot; publish it first"),
        Conflict("an adapter named 'clauses' is registered"),
        ValueError("a snapshot with no records cannot train an adapter"),
    ],
)
async def test_a_permanent_failure_fails_at_once_with_its_error(error: Exception) -> None:
    q = MemoryTrainingJobs(TrainingPolicy(max_attempts=5))
    job = (await q.enqueue(REQUEST)).job
    worker = TrainingWorker(q, stub_trainer(fail=error), name="w")
    assert await worker.run_once() == "failed"
    failed = await q.get(job.id)
    assert failed is not None and failed.state == "failed" and failed.attempts == 1
    assert (failed.error_type, failed.error) == (type(error).__name__, str(error))
    assert await worker.run_once() is None, "not retried"


async def test_a_transient_failure_backs_off_then_fails() -> None:
    clock = Clock()
    q = MemoryTrainingJobs(TrainingPolicy(max_attempts=2, backoff_base_s=30), clock=clock)
    job = (await q.enqueue(REQUEST)).job
    worker = TrainingWorker(q, stub_trainer(fail=OSError("disk full")), name="w")
    assert await worker.run_once() == "retry"
    waiting = await q.get(job.id)
    assert waiting is not None and waiting.state == "queued" and waiting.error == "disk full"
    assert await worker.run_once() is None  # backing off
    clock.advance(31)
    assert await worker.run_once() == "failed"
    failed = await q.get(job.id)
    assert failed is not None and failed.state == "failed" and failed.attempts == 2
    assert failed.error_type == "OSError"


async def test_a_worker_that_lost_its_lease_stops_and_reports_nothing() -> None:
    clock = Clock()
    q = MemoryTrainingJobs(TrainingPolicy(lease_s=60), clock=clock)
    job = (await q.enqueue(REQUEST)).job
    gate = threading.Event()
    slow = TrainingWorker(q, stub_trainer(steps=1000, gate=gate), name="slow",
                          progress_every_s=0.05)  # fmt: skip
    task = asyncio.create_task(slow.run_once())
    await wait_for_state(q, job.id, "running")
    clock.advance(61)  # the slow worker's lease ran out (as if it had stalled)
    thief = await q.claim("thief")
    assert thief is not None and thief.id == job.id and thief.attempts == 2
    gate.set()  # the slow worker's next heartbeat finds the lease gone; its next step aborts
    assert await asyncio.wait_for(task, 10) == "lost"
    current = await q.get(job.id)
    assert current is not None and current.state == "running" and current.locked_by == "thief"
    assert current.error is None


async def test_a_job_that_keeps_losing_its_worker_is_given_up() -> None:
    clock = Clock()
    q = MemoryTrainingJobs(TrainingPolicy(lease_s=60, max_attempts=2), clock=clock)
    job = (await q.enqueue(REQUEST)).job
    for dead in ("dead-1", "dead-2"):  # each killed mid-training: the lease runs out
        assert await q.claim(dead) is not None
        clock.advance(61)
    trained = []

    async def never(job: TrainingJob, on_step: OnStep) -> RegisteredAdapter:
        trained.append(job.id)
        return ADAPTER

    assert await TrainingWorker(q, never, name="w").run_once() == "failed"
    failed = await q.get(job.id)
    assert failed is not None and failed.state == "failed" and failed.error_type == "WorkerLost"
    assert failed.error is not None and "gave up after 2 attempts" in failed.error
    assert trained == []


async def test_a_stopped_worker_gives_its_job_back() -> None:
    q = MemoryTrainingJobs()
    job = (await q.enqueue(REQUEST)).job
    gate = threading.Event()
    worker = TrainingWorker(q, stub_trainer(steps=1000, gate=gate), name="w")
    task = asyncio.create_task(worker.run_once())
    await wait_for_state(q, job.id, "running")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gate.set()  # the training thread's next step ends it
    back = await q.get(job.id)
    assert back is not None and back.state == "queued" and back.attempts == 0


async def test_the_worker_rides_out_an_unavailable_queue() -> None:
    q = MemoryTrainingJobs()
    job = (await q.enqueue(REQUEST)).job
    q.down = True
    worker = TrainingWorker(q, stub_trainer(), name="w")
    task = asyncio.create_task(worker.run(idle_s=0.02))
    await asyncio.sleep(0.1)
    assert not task.done()
    q.down = False
    await wait_for_state(q, job.id, "succeeded")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_which_failures_are_permanent() -> None:
    assert is_permanent_failure(NotFound("x")) and is_permanent_failure(Conflict("x"))
    assert is_permanent_failure(Invalid("x")) and is_permanent_failure(ValueError("x"))
    data = asyncpg.exceptions.StringDataRightTruncationError("value too long")
    assert is_permanent_failure(data)
    for transient in (
        OSError("disk full"),
        TimeoutError(),
        RuntimeError("CUDA error"),
        asyncpg.exceptions.ConnectionDoesNotExistError("gone"),
    ):
        assert not is_permanent_failure(transient), transient
    assert error_of(NotFound("no datanet named 'x'")) == ("NotFound", "no datanet named 'x'")
    assert error_of(TimeoutError()) == ("TimeoutError", "TimeoutError")
