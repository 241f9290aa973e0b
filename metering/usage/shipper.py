"""Moves usage records from the local log to the usage store, exactly once.

The order of operations is the whole design: read a batch from the log, insert it, and only
after the insert has committed advance the log's shipped cursor. A crash or outage anywhere
before the cursor write means the batch is read and inserted again, which the store's
`ON CONFLICT (request_id) DO NOTHING` turns into a no-op. Nothing is ever dropped: a batch
that fails stays in the log and is retried with capped exponential backoff.

Except a record the store can never take (`UsageRejected`: a NUL in its text, a model name
too long for the index): retrying it would stop every record behind it forever. Then the
batch is split in halves, recursively, until the rejected records stand alone; the others
are stored, the rejected ones go to the dead-letter store (queue `usage`, their exact
msgpack), and only after both have committed does the cursor move. A crash or a transient
failure anywhere in between (the dead-letter write included) moves nothing: the batch is
read, split and stored again, which the store and the dead-letter store both deduplicate.
Without a dead-letter store the rejected batch is retried like any other failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from core.deadletters import DeadLetterStore, NewDeadLetter
from metering import metrics
from metering.usage.log import UsageLog
from metering.usage.record import UsageRecord
from metering.usage.store import (
    UsageRejected,
    UsageStore,
    UsageStoreUnavailable,
    dead_letter_payload,
)

log = logging.getLogger(__name__)


class UsageShipper:
    def __init__(
        self,
        log: UsageLog,
        store: UsageStore,
        *,
        batch_size: int = 5000,
        interval_s: float = 0.2,
        max_backoff_s: float = 5.0,
        dead_letters: DeadLetterStore | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self._log = log
        self._store = store
        self._dead_letters = dead_letters
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        # One batch in flight at a time: the loop and flush() must not ship the same records
        # concurrently (harmless, thanks to ON CONFLICT, but wasteful).
        self._batch_lock = asyncio.Lock()
        self.shipped_total = 0
        """Records whose batch committed and whose cursor advanced."""
        self.inserted_total = 0
        """Rows the store reported as new; shipped_total - inserted_total were replays."""
        self.batches_total = 0
        self.dead_lettered_total = 0
        """Records the store rejected for good, moved to the dead-letter store."""
        self.failures_total = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_success_monotonic: float | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("shipper already started")
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-shipper")

    async def stop(self, *, flush: bool = True, timeout_s: float = 10.0) -> bool:
        """Stop the background loop, then (by default) ship what is pending.

        Returns True when nothing acknowledged is left unshipped. Whatever is left stays in the
        local log and ships after the next start; it is never lost.
        """
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            # asyncio.wait, not `await task`: if our caller is cancelled, the cancellation must
            # reach the caller rather than be swallowed along with the loop's own.
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.error("usage shipper loop had died", exc_info=task.exception())
        if not flush:
            return self._log.pending_records == 0
        done = await self.flush(timeout_s)
        if not done:
            log.error(
                "usage shipper stopped with %d records unshipped (last error: %s); they stay "
                "in %s and ship on the next start",
                self._log.pending_records,
                self.last_error,
                self._log.directory,
            )
        return done

    def wake(self) -> None:
        """Ship now instead of at the next interval (e.g. after a burst of appends)."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- shipping -------------------------------------------------------------------------

    async def ship_once(self) -> int:
        """Ship one batch; returns how many records it covered (0: nothing pending).

        Raises whatever the store raised; the records stay in the log for the next attempt.
        """
        async with self._batch_lock:
            try:
                return await self._ship_batch()
            except Exception as exc:
                self.failures_total += 1
                metrics.usage_ship_failed()
                self.consecutive_failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise

    async def _ship_batch(self) -> int:
        records, cursor = await self._log.read_unshipped(self._batch_size)
        if not records:
            # Possibly a jump over emptied segments; moving the cursor lets them be deleted.
            if cursor > self._log.shipped_cursor:
                await self._log.mark_shipped(cursor)
            return 0
        try:
            inserted = await self._store.insert_batch(records)
            rejected: list[tuple[UsageRecord, UsageRejected]] = []
        except UsageRejected:
            if self._dead_letters is None:
                raise
            inserted, rejected = await self._insert_isolating(records)
            await self._dead_letters.put(
                [
                    NewDeadLetter.of("usage", r.request_id, dead_letter_payload(r), e)
                    for r, e in rejected
                ]
            )
            for r, e in rejected:
                log.error("usage record %r dead-lettered: %s", r.request_id, e)
        # Only now, after the commit: a crash before this line replays the batch.
        await self._log.mark_shipped(cursor)
        self.dead_lettered_total += len(rejected)
        self.shipped_total += len(records)
        metrics.usage_shipped(len(records))
        self.inserted_total += inserted
        self.batches_total += 1
        self.consecutive_failures = 0
        self.last_success_monotonic = time.monotonic()
        return len(records)

    async def _insert_isolating(
        self, records: list[UsageRecord]
    ) -> tuple[int, list[tuple[UsageRecord, UsageRejected]]]:
        """Insert `records` in halves, recursively, around the ones the store rejects; returns
        how many rows were new and the rejected records with their errors. A transient error
        propagates (what was stored so far is deduplicated on the retry)."""
        inserted = 0
        rejected: list[tuple[UsageRecord, UsageRejected]] = []
        todo = [records[: len(records) // 2], records[len(records) // 2 :]]
        while todo:
            chunk = todo.pop(0)
            if not chunk:
                continue
            try:
                inserted += await self._store.insert_batch(chunk)
            except UsageRejected as e:
                if len(chunk) == 1:
                    rejected.append((chunk[0], e))
                else:
                    half = len(chunk) // 2
                    todo[:0] = [chunk[:half], chunk[half:]]
        return inserted, rejected

    async def flush(self, timeout_s: float) -> bool:
        """Ship everything acknowledged before this call; True if it all shipped in time.

        Retries through store outages (with backoff) until the deadline.
        """
        deadline = time.monotonic() + timeout_s
        target = self._log.records_appended
        backoff = self._interval_s
        while self._log.records_shipped < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await self.ship_once()
            except Exception as exc:
                self._log_failure(exc)
                await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, self._max_backoff_s)
        return True

    async def _run(self) -> None:
        backoff = self._interval_s
        while not self._stopping.is_set():
            try:
                shipped = await self.ship_once()
            except Exception as exc:
                # Every failure is retried, not only UsageStoreUnavailable: dropping a batch
                # would break the invariant, and a stuck batch is visible in the metrics.
                self._log_failure(exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            backoff = self._interval_s
            if shipped < self._batch_size:
                await self._sleep(self._interval_s)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        if self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    def _log_failure(self, exc: Exception) -> None:
        if isinstance(exc, UsageStoreUnavailable):
            log.warning(
                "usage store unavailable (%d pending, attempt %d): %s",
                self._log.pending_records,
                self.consecutive_failures,
                exc,
            )
        else:
            log.error(
                "shipping usage failed (%d pending, attempt %d)",
                self._log.pending_records,
                self.consecutive_failures,
                exc_info=exc,
            )
