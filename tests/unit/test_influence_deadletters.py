"""The influence enqueuer and jobs Postgres can never take (a NUL in a prompt or output): the
batch is split, only the bad job goes to the dead-letter store, every other job is queued,
and the buffer moves on; a transient failure (of the queue or of the dead-letter store)
keeps the whole batch buffered."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from prometheus_client import REGISTRY

from attribution.influence.queue import NewJob
from attribution.influence.queue_memory import MemoryInfluenceQueue
from core.deadletters import InMemoryDeadLetterStore
from core.sqlstate import DataRejected
from gateway.inference import CompletedResponse
from gateway.influence import InfluenceEnqueuer, replay_dead_letter, storable_job


class StrictQueue(MemoryInfluenceQueue):
    """Refuses a whole batch holding a NUL anywhere in a job's text, as Postgres does."""

    async def enqueue(self, jobs: Sequence[NewJob]) -> int:
        for j in jobs:
            if "\x00" in msgspec.json.encode([j.prompt, j.output]).decode("unicode_escape"):
                raise DataRejected(
                    "invalid byte sequence for encoding UTF8: 0x00", sqlstate="22021"
                )
        return await super().enqueue(jobs)


def response(i: int, prompt: str | None = None, output: str | None = None) -> CompletedResponse:
    return CompletedResponse(
        request_id=f"req-{i:06d}",
        account_id=7,
        adapter="recipes",
        endpoint="chat.completions",
        prompt=[{"role": "user", "content": prompt if prompt is not None else f"question {i}"}],
        output=output if output is not None else f"answer {i}",
        attribution={"snapshot_id": "s1", "contributors": [{"id": 3, "weight_ppm": 10**6}]},
    )


def dead_lettered() -> float:
    return REGISTRY.get_sample_value("royalty_dead_letters_total", {"queue": "influence"}) or 0.0


async def test_without_a_dead_letter_store_a_nul_keeps_every_job_buffered() -> None:
    """The defect: the queue refuses the batch, the enqueuer retries it whole, forever."""
    queue = StrictQueue()
    enq = InfluenceEnqueuer(queue, batch_size=50)
    for i in range(120):
        enq(response(i, prompt="x\x00y" if i == 10 else None))
    for _ in range(3):
        assert not await enq.flush()
    assert queue.rows == {} and len(enq) == 120


async def test_a_job_with_a_nul_is_dead_lettered_and_the_rest_are_queued() -> None:
    queue = StrictQueue()
    dead = InMemoryDeadLetterStore()
    enq = InfluenceEnqueuer(queue, batch_size=50, dead_letters=dead)
    before = dead_lettered()
    for i in range(120):
        enq(response(i, prompt="x\x00y" if i == 10 else None, output="o\x00" if i == 77 else None))
    assert await enq.flush()
    assert len(enq) == 0
    assert sorted(queue.rows) == [f"req-{i:06d}" for i in range(120) if i not in (10, 77)]
    letters = await dead.list()
    assert [x.item_key for x in letters] == ["req-000010", "req-000077"]
    job = msgspec.msgpack.decode(letters[0].payload, type=NewJob)
    assert job.prompt == [{"role": "user", "content": "x\x00y"}], "the exact job is kept"
    assert letters[0].sqlstate == "22021" and "0x00" in letters[0].error
    assert enq.dead_lettered_total == 2 and dead_lettered() - before == 2
    assert enq.enqueued_total == 118 and enq.failures_total == 0
    # A replayed flush (same jobs again) adds no second letter.
    for i in (10, 11):
        enq(response(i, prompt="x\x00y" if i == 10 else None))
    assert await enq.flush()
    assert len(await dead.list()) == 2 and dead_lettered() - before == 2

    # Replay: queued with the NUL removed; the letter is replayed and its text forgotten.
    replayed = await replay_dead_letter(queue, dead, letters[0].id, "NUL stripped")
    assert replayed.prompt == [{"role": "user", "content": "xy"}]
    assert queue.rows["req-000010"].job.prompt == [{"role": "user", "content": "xy"}]
    after = await dead.get(letters[0].id)
    assert after is not None and after.state == "replayed" and after.payload == b""


async def test_a_dead_letter_store_outage_keeps_the_whole_batch_buffered() -> None:
    queue = StrictQueue()
    dead = InMemoryDeadLetterStore()
    dead.fail_next = 1
    enq = InfluenceEnqueuer(queue, batch_size=50, dead_letters=dead)
    for i in range(20):
        enq(response(i, output="bad\x00" if i == 3 else None))
    assert not await enq.flush()
    assert len(enq) == 20 and dead.rows == {} and enq.failures_total == 1
    assert await enq.flush()
    assert len(enq) == 0 and len(queue.rows) == 19 and len(dead.rows) == 1


async def test_transient_queue_failures_are_not_dead_lettered() -> None:
    queue = StrictQueue()
    dead = InMemoryDeadLetterStore()
    enq = InfluenceEnqueuer(queue, batch_size=50, dead_letters=dead)
    for i in range(5):
        enq(response(i))
    queue.down = True
    assert not await enq.flush()
    assert dead.rows == {} and len(enq) == 5
    queue.down = False
    assert await enq.flush() and len(queue.rows) == 5


def test_storable_job_cleans_every_string() -> None:
    import datetime as dt

    job = NewJob(
        request_id="r", adapter="a", account_id=1,
        prompt=[{"role\x00": "user", "content": ["a\x00", {"t": "b\ud800"}]}],
        output="o\x00", attribution={"k": "v\x00"}, created_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    clean = storable_job(job)
    assert clean.prompt == [{"role": "user", "content": ["a", {"t": "b\\ud800"}]}]
    assert clean.output == "o" and clean.attribution == {"k": "v"}
