"""`InfluenceEnqueuer`: the gateway's side of gradient influence. It observes every answered
adapter response (`gateway.inference.ResponseObserver`) and queues an influence job for it.

The observer runs on the event loop after the response's usage record is durable, so it must
not block: it appends the job to a bounded in-memory buffer and returns. A background task
inserts the buffer into the queue in batches (`InfluenceQueue.enqueue`, idempotent by request
id, so a batch retried after an ambiguous failure adds nothing twice).

When Postgres is unavailable the batch stays buffered and the task retries with capped
exponential backoff. When the buffer is full, new jobs are dropped, counted in
`royalty_influence_jobs_dropped_total` and logged. This loses no money and breaks no
invariant: influence only refines attribution later. A response's span weights are already
on its usage record (posted by the ledger worker as they are); a dropped job just means that
response keeps them. Likewise jobs still buffered when the process is killed are lost
(a clean stop flushes them).

A job Postgres can never take (`core.sqlstate.blames_the_data`: a NUL in its prompt or
output) would keep its batch, and every job behind it, buffered forever. Then the batch is
split in halves, recursively, until the rejected jobs stand alone; the others are queued and
the rejected ones go to the dead-letter store (queue `influence`, the job as msgpack) before
the batch leaves the buffer. A transient failure anywhere in between keeps the whole batch
buffered (both writes are idempotent). `replay_dead_letter` queues such a job again with its
text made storable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import Counter, Gauge

from attribution.influence.queue import (
    InfluenceQueue,
    NewJob,
    PostgresInfluenceQueue,
    QueuePolicy,
)
from core.deadletters import DeadLetterStore, NewDeadLetter
from core.sqlstate import blames_the_data, describe, storable_text
from gateway.inference import CompletedResponse

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

JOBS_DROPPED = Counter(
    "royalty_influence_jobs_dropped_total",
    "Influence jobs dropped because the gateway's buffer was full (Postgres unavailable "
    "for long); those responses keep their inline span attribution.",
)
JOBS_ENQUEUED = Counter(
    "royalty_influence_jobs_enqueued_total", "Influence jobs written to the queue."
)
ENQUEUE_FAILURES = Counter(
    "royalty_influence_enqueue_failures_total", "Failed attempts to write a batch of jobs."
)
JOBS_BUFFERED = Gauge(
    "royalty_influence_jobs_buffered",
    "Influence jobs waiting in the gateway's memory to be queued.",
    multiprocess_mode="livesum",
)


def influence_queue(engine: AsyncEngine, retention_s: float = 0.0) -> PostgresInfluenceQueue:
    """The queue as configured: text kept `retention_s` after a job finishes
    (`ROYALTY_INFLUENCE_RETENTION_S`)."""
    return PostgresInfluenceQueue(engine, QueuePolicy(retention_s=retention_s))


class InfluenceEnqueuer:
    def __init__(
        self,
        queue: InfluenceQueue,
        *,
        max_buffer: int = 10_000,
        batch_size: int = 500,
        interval_s: float = 0.2,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
        dead_letters: DeadLetterStore | None = None,
    ) -> None:
        if max_buffer < 1 or batch_size < 1:
            raise ValueError("max_buffer and batch_size must be positive")
        self.queue = queue
        self.dead_letters = dead_letters
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._buffer: collections.deque[NewJob] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = 0.0
        self._drops_unlogged = 0
        self.enqueued_total = 0
        self.dropped_total = 0
        self.failures_total = 0
        self.dead_lettered_total = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # --- the observer (event loop, must not block) ---------------------------------------
    def __call__(self, done: CompletedResponse) -> None:
        if not done.adapter:
            return
        if len(self._buffer) >= self.max_buffer:
            self._drop(done.request_id)
            return
        self._buffer.append(
            NewJob(
                request_id=done.request_id,
                adapter=done.adapter,
                account_id=done.account_id,
                prompt=done.prompt,
                output=done.output,
                attribution=done.attribution,
                created_at=dt.datetime.now(dt.UTC),
                started_at=done.started_at,
            )
        )
        JOBS_BUFFERED.set(len(self._buffer))
        if len(self._buffer) >= self.batch_size and self._wake is not None:
            self._wake.set()

    def _drop(self, request_id: str) -> None:
        self.dropped_total += 1
        self._drops_unlogged += 1
        JOBS_DROPPED.inc()
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # one line per 10 s, not one per request
            log.warning(
                "influence buffer full (%d jobs, queue unavailable): dropped %d job(s), latest "
                "%s; their span attribution stands",
                self.max_buffer, self._drops_unlogged, request_id,
            )  # fmt: skip
            self._last_drop_log, self._drops_unlogged = now, 0

    # --- the background writer ---------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="influence-enqueuer")

    async def _run(self) -> None:
        assert self._wake is not None
        delay = self.interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            delay = self.interval_s if await self.flush() else min(
                max(delay * 2, self.interval_s), self.max_backoff_s
            )  # fmt: skip

    async def flush(self) -> bool:
        """Write every buffered job; False (jobs kept) if the queue refused a batch."""
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
            rejected = 0
            try:
                try:
                    await asyncio.wait_for(self.queue.enqueue(batch), self.timeout_s)
                except Exception as e:
                    if self.dead_letters is None or not blames_the_data(e):
                        raise
                    rejected = await self._enqueue_isolating(batch, e)
            except Exception as e:  # any other failure: keep the batch, retry later
                self.failures_total += 1
                ENQUEUE_FAILURES.inc()
                log.warning("influence jobs not queued yet (%d buffered): %r", len(self), e)
                return False
            # Only this task removes from the left; the observer appends on the right.
            for _ in batch:
                self._buffer.popleft()
            self.enqueued_total += len(batch) - rejected
            JOBS_ENQUEUED.inc(len(batch) - rejected)
            JOBS_BUFFERED.set(len(self._buffer))
        return True

    async def _enqueue_isolating(self, batch: list[NewJob], error: Exception) -> int:
        """Queue `batch` (which failed with `error`) in halves, recursively; dead-letter each
        job refused alone and return how many. Raises (nothing dead-lettered) on any other
        failure."""
        assert self.dead_letters is not None
        rejected: list[tuple[NewJob, Exception]] = []
        todo: list[tuple[list[NewJob], Exception]] = [(batch, error)]
        while todo:
            chunk, failure = todo.pop()
            if len(chunk) == 1:
                rejected.append((chunk[0], failure))
                continue
            half = len(chunk) // 2
            for part in (chunk[:half], chunk[half:]):
                try:
                    await asyncio.wait_for(self.queue.enqueue(part), self.timeout_s)
                except Exception as refused:
                    if not blames_the_data(refused):
                        raise
                    todo.append((part, refused))
        letters = [
            NewDeadLetter.of("influence", job.request_id, dead_letter_payload(job), why)
            for job, why in rejected
        ]
        await asyncio.wait_for(self.dead_letters.put(letters), self.timeout_s)
        self.dead_lettered_total += len(rejected)
        for job, why in rejected:
            log.error("influence job %r dead-lettered: %s", job.request_id, describe(why))
        return len(rejected)

    def __len__(self) -> int:
        return len(self._buffer)

    async def stop(self, *, flush: bool = True, timeout_s: float = 10.0) -> bool:
        """Stop the writer; with `flush`, try to write what is buffered for up to `timeout_s`.
        Returns True when nothing is left behind."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if flush and self._buffer:
            deadline = time.monotonic() + timeout_s
            for _ in range(max(int(timeout_s / 0.5), 1)):
                if await self.flush() or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.5)
        if self._buffer:
            log.warning("%d influence jobs not queued at stop; their span attribution stands",
                        len(self._buffer))  # fmt: skip
        return not self._buffer


# --- dead letters ----------------------------------------------------------------------------
def dead_letter_payload(job: NewJob) -> bytes:
    """An influence job as the dead-letter store keeps it: msgpack (text that cannot even be
    encoded, a lone surrogate, is escaped first)."""
    try:
        return msgspec.msgpack.encode(job)
    except UnicodeEncodeError:
        return msgspec.msgpack.encode(storable_job(job))


def storable_job(job: NewJob) -> NewJob:
    """`job` with NUL removed and lone surrogates escaped in its prompt, output and
    attribution (everywhere in them: keys and values of nested JSON too)."""
    return dataclasses.replace(
        job,
        request_id=storable_text(job.request_id),
        adapter=storable_text(job.adapter),
        prompt=_storable(job.prompt),
        output=storable_text(job.output),
        attribution=_storable(job.attribution),
    )


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        # jsonb refuses \u0000 however it is written; the JSON text escapes what remains.
        return storable_text(value)
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {storable_text(str(k)): _storable(v) for k, v in value.items()}
    return value


async def replay_dead_letter(
    queue: InfluenceQueue, store: DeadLetterStore, letter_id: int, note: str
) -> NewJob:
    """Queue dead influence letter `letter_id`'s job again, its text made storable
    (`storable_job`), then mark the letter replayed and forget its text. Queuing is
    idempotent by request id, so a replay interrupted between the two can be run again.
    Raises `LookupError` when there is no such dead influence letter."""
    letter = await store.get(letter_id)
    if letter is None or letter.queue != "influence" or letter.state != "dead":
        raise LookupError(f"no dead influence letter {letter_id}")
    job = storable_job(msgspec.msgpack.decode(letter.payload, type=NewJob))
    await queue.enqueue([job])
    if await store.mark_replayed(letter_id, note, forget_payload=True) is None:
        raise LookupError(f"dead letter {letter_id} was resolved meanwhile (its job is queued)")
    return job
