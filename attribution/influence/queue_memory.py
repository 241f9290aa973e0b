"""`MemoryInfluenceQueue`: the influence job queue in memory, for unit tests.

Same contract as `PostgresInfluenceQueue` (`attribution.influence.queue`), state by state,
with a clock the test controls. It can be made unavailable (`down = True`) to stand in for a
Postgres outage: every call then raises `ConnectionError`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from attribution.influence.queue import (
    STATES,
    TEXT_EXPIRED,
    ClaimedJob,
    JobResult,
    JobState,
    JobView,
    NewJob,
    QueueCounts,
    QueuePolicy,
)


@dataclass
class _Row:
    job: NewJob
    state: JobState = "queued"
    attempts: int = 0
    run_after: dt.datetime = dt.datetime.min.replace(tzinfo=dt.UTC)
    locked_by: str | None = None
    locked_until: dt.datetime | None = None
    last_error: str | None = None
    note: str | None = None
    prompt: str | list[Any] | None = None
    output: str | None = None
    text_expires_at: dt.datetime | None = None
    result: JobResult | None = None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MemoryInfluenceQueue:
    def __init__(
        self, policy: QueuePolicy | None = None, clock: Callable[[], dt.datetime] = _utcnow
    ) -> None:
        self.policy = policy or QueuePolicy()
        self.clock = clock
        self.rows: dict[str, _Row] = {}
        self.down = False
        self.enqueue_calls = 0

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("influence queue unavailable (test)")

    def _held(self, worker: str, request_id: str) -> _Row | None:
        row = self.rows.get(request_id)
        if row is None or row.state != "running" or row.locked_by != worker:
            return None
        return row

    def _secs(self, s: float) -> dt.timedelta:
        return dt.timedelta(seconds=s)

    def _finished(self, row: _Row, state: JobState) -> None:
        row.state, row.locked_by, row.locked_until = state, None, None
        if self.policy.retention_s > 0:
            row.text_expires_at = self.clock() + self._secs(self.policy.retention_s)
        else:
            row.prompt = row.output = row.text_expires_at = None

    async def enqueue(self, jobs: Sequence[NewJob]) -> int:
        self._check()
        self.enqueue_calls += 1
        new = 0
        for j in jobs:
            if j.request_id in self.rows:
                continue
            self.rows[j.request_id] = _Row(
                j, run_after=j.created_at, prompt=j.prompt, output=j.output,
                text_expires_at=j.created_at + self._secs(self.policy.max_text_age_s),
            )  # fmt: skip
            new += 1
        return new

    async def claim(
        self, worker: str, *, limit: int = 1, month: dt.date | None = None
    ) -> list[ClaimedJob]:
        self._check()
        now = self.clock()
        due = [
            r
            for r in self.rows.values()
            if (
                (r.state == "queued" and r.run_after <= now)
                or (r.state == "running" and r.locked_until is not None and r.locked_until < now)
            )
            and (month is None or r.job.month <= month)
        ]
        due.sort(key=lambda r: (r.run_after, r.job.request_id))
        out = []
        for r in due[:limit]:
            r.state, r.locked_by = "running", worker
            r.locked_until = now + self._secs(self.policy.lease_s)
            r.attempts += 1
            j = r.job
            out.append(
                ClaimedJob(
                    j.request_id,
                    j.adapter,
                    j.account_id,
                    j.month,
                    j.created_at,
                    r.attempts,
                    j.attribution,
                    r.prompt,
                    r.output,
                )  # fmt: skip
            )
        return out

    async def heartbeat(self, worker: str, request_ids: Sequence[str]) -> int:
        self._check()
        n = 0
        for rid in request_ids:
            row = self._held(worker, rid)
            if row is not None:
                row.locked_until = self.clock() + self._secs(self.policy.lease_s)
                n += 1
        return n

    async def complete(self, worker: str, request_id: str, result: JobResult) -> bool:
        self._check()
        row = self._held(worker, request_id)
        if row is None:
            return False
        row.result = result
        row.last_error = row.note = None
        self._finished(row, "done")
        return True

    async def finish(
        self, worker: str, request_id: str, state: JobState, *, note: str | None = None,
        error: str | None = None,
    ) -> bool:  # fmt: skip
        self._check()
        if state not in ("done", "expired", "failed"):
            raise ValueError(f"a job cannot finish as {state!r}")
        row = self._held(worker, request_id)
        if row is None:
            return False
        row.note, row.last_error = note, error
        self._finished(row, state)
        return True

    async def fail(self, worker: str, request_id: str, error: str) -> JobState:
        self._check()
        row = self._held(worker, request_id)
        if row is None:
            return "running"
        row.last_error = error[:2000]
        if row.attempts >= self.policy.max_attempts:
            self._finished(row, "failed")
        else:
            row.state, row.locked_by, row.locked_until = "queued", None, None
            row.run_after = self.clock() + self._secs(self.policy.backoff_s(row.attempts))
        return row.state

    async def postpone(self, worker: str, request_id: str, delay_s: float, reason: str) -> bool:
        self._check()
        row = self._held(worker, request_id)
        if row is None:
            return False
        row.state, row.locked_by, row.locked_until = "queued", None, None
        row.attempts = max(row.attempts - 1, 0)
        row.note = reason
        row.run_after = self.clock() + self._secs(delay_s)
        return True

    async def expire_month(self, month: dt.date, reason: str) -> int:
        self._check()
        now, n = self.clock(), 0
        for r in self.rows.values():
            leased = r.state == "running" and r.locked_until is not None and r.locked_until >= now
            if r.job.month <= month and r.state in ("queued", "running"):
                if leased:
                    continue
                r.state, r.locked_by, r.locked_until, r.last_error = "expired", None, None, reason
                r.prompt = r.output = r.text_expires_at = None
                n += 1
        return n

    async def sweep(self) -> int:
        self._check()
        now, n = self.clock(), 0
        for r in self.rows.values():
            has_text = r.prompt is not None or r.output is not None
            if has_text and r.text_expires_at is not None and r.text_expires_at <= now:
                r.prompt = r.output = None
                if r.state == "queued":
                    r.state, r.last_error = "expired", TEXT_EXPIRED
                n += 1
        return n

    async def counts(self, *, month: dt.date | None = None) -> QueueCounts:
        self._check()
        rows = [r for r in self.rows.values() if month is None or r.job.month <= month]
        by_state: dict[str, int] = {s: 0 for s in STATES}
        for r in rows:
            by_state[r.state] += 1
        queued = [r.job.created_at for r in rows if r.state == "queued"]
        oldest = (self.clock() - min(queued)).total_seconds() if queued else None
        return QueueCounts(by_state, oldest)

    async def depth(self) -> int:
        return (await self.counts()).depth

    async def view(self, request_id: str) -> JobView | None:
        self._check()
        r = self.rows.get(request_id)
        if r is None:
            return None
        return JobView(
            request_id, r.job.adapter, r.state, r.attempts, r.last_error, r.note,
            r.prompt is not None or r.output is not None, r.result,
        )  # fmt: skip

    def snapshot(self, request_id: str) -> _Row:
        """A copy of a job's row, for assertions."""
        return replace(self.rows[request_id])
