"""Recording one request's usage, with a fallback for each way the durable path can fail.

1. The local usage log (`UsageLog.append`: fsynced, group-committed), shipped later.
2. If the log refuses (a full disk, a failed fsync), straight into the usage store: the same
   row the shipper would write, idempotent by request id, so a record that also reaches the
   log lands once.
3. If the store refuses too (Postgres down at the same time), the record is held in memory
   and retried every second, log first, until one of them takes it; counted in
   `royalty_usage_unrecorded_records` and logged loudly. `record` raises `UsageNotRecorded` in
   that case, so the caller knows the record is not durable yet: a response not yet sent is
   refused instead (`hold=False`), a stream already delivered leaves its record held.

The gateway asks `health()` before admitting a request, so step 2 and 3 only ever see the
requests already in flight when the disk filled or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from core.errors import Unavailable
from metering import metrics
from metering.usage.log import UsageLog, UsageLogError
from metering.usage.record import UsageRecord
from metering.usage.store import UsageStore

log = logging.getLogger(__name__)


class UsageNotRecorded(Unavailable):
    """Neither the log nor the store took the record (it may be held for retry)."""


@runtime_checkable
class UsageSink(Protocol):
    """Where the gateway sends each request's usage record."""

    async def record(self, rec: UsageRecord, *, hold: bool = True) -> None:
        """Return once `rec` is durable; raise `UsageNotRecorded` if it is not (with `hold`,
        it is kept and retried until it is)."""
        ...

    def health(self) -> str | None:
        """None while records can be taken; otherwise why not (requests are then refused)."""
        ...


class MemoryUsageSink:
    """The test double: records in a list; `unhealthy` and `fail_next` inject faults."""

    def __init__(self, write: Callable[[UsageRecord], Awaitable[None]] | None = None) -> None:
        self.records: list[UsageRecord] = []
        self.held: list[UsageRecord] = []
        self.unhealthy: str | None = None
        self.fail_next = 0
        self._write = write

    async def record(self, rec: UsageRecord, *, hold: bool = True) -> None:
        await asyncio.sleep(0)
        if self.fail_next > 0:
            self.fail_next -= 1
            if hold:
                self.held.append(rec)
            raise UsageNotRecorded(rec.request_id)
        if self._write is not None:
            await self._write(rec)
        else:
            self.records.append(rec)

    def health(self) -> str | None:
        return self.unhealthy


def as_usage_sink(sink: UsageSink | Callable[[UsageRecord], Awaitable[None]]) -> UsageSink:
    """A `UsageSink` as is; a plain `async (record) -> None` function (tests, benchmarks)
    as an always-healthy sink whose failures are not held."""
    if isinstance(sink, UsageSink):
        return sink
    return MemoryUsageSink(sink)


class UsageRecorder:
    def __init__(
        self,
        usage_log: UsageLog,
        store: UsageStore | None,
        *,
        store_timeout_s: float = 5.0,
        retry_s: float = 1.0,
    ) -> None:
        self.log = usage_log
        self.store = store
        self.store_timeout_s = store_timeout_s
        self.retry_s = retry_s
        self._held: dict[str, UsageRecord] = {}
        self._retry: asyncio.Task[None] | None = None
        self.via_store = 0
        """Records the log refused and the store took."""
        self._healthy: bool | None = None

    def health(self) -> str | None:
        """None while requests may be admitted; else why not (see `UsageLog.health`)."""
        reason = self.log.health()
        if (reason is None) is not self._healthy:
            self._healthy = reason is None
            metrics.usage_log_health(self._healthy)
            if reason is not None:
                log.error("refusing requests: %s", reason)
            else:
                log.warning("usage can be recorded again: admitting requests")
        return reason

    @property
    def held(self) -> int:
        """Records not durable anywhere yet (in memory, being retried)."""
        return len(self._held)

    async def record(self, rec: UsageRecord, *, hold: bool = True) -> None:
        """Make `rec` durable (log, else store). Raises `UsageNotRecorded` if neither took
        it; with `hold` it is then kept and retried until one does."""
        if await self._try(rec):
            return
        if hold:
            self.hold(rec)
        raise UsageNotRecorded(f"usage record {rec.request_id} is not durable yet")

    def hold(self, rec: UsageRecord) -> None:
        """Keep `rec` in memory and retry it until the log or the store takes it."""
        self._held[rec.request_id] = rec
        metrics.usage_unrecorded(len(self._held))
        log.error(
            "usage record %s held in memory (%d held): neither the usage log nor Postgres "
            "took it; retrying every %.0fs",
            rec.request_id, len(self._held), self.retry_s,
        )  # fmt: skip
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(
                self._retry_held(), name="usage-recorder-retry"
            )

    async def _try(self, rec: UsageRecord) -> bool:
        try:
            await self.log.append(rec)
            return True
        except UsageLogError as e:
            log.error("usage log refused record %s: %s", rec.request_id, e)
        if self.store is None:
            return False
        try:
            async with asyncio.timeout(self.store_timeout_s):
                await self.store.insert_batch([rec])
        except Exception as e:  # any failure: the record is not known to be stored
            log.error("usage store refused record %s too: %r", rec.request_id, e)
            return False
        self.via_store += 1
        metrics.usage_recorded_via_store()
        return True

    async def _retry_held(self) -> None:
        while self._held:
            await asyncio.sleep(self.retry_s)
            for rid, rec in list(self._held.items()):
                if await self._try(rec):
                    self._held.pop(rid, None)
                    log.warning("usage record %s recorded after being held", rid)
            metrics.usage_unrecorded(len(self._held))

    async def close(self, timeout_s: float = 10.0) -> bool:
        """Stop retrying after one last attempt within `timeout_s`; True if nothing is left
        unrecorded (anything left is logged with its full content, the last trace of it)."""
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for rid, rec in list(self._held.items()):
                    if await self._try(rec):
                        self._held.pop(rid, None)
        for rec in self._held.values():
            log.critical("usage record never recorded: %r", rec)
        metrics.usage_unrecorded(len(self._held))
        return not self._held
