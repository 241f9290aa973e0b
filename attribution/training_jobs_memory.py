"""`MemoryTrainingJobs`: the adapter training queue in memory, for unit tests.

Same contract as `PostgresTrainingJobs` (`attribution.training_jobs`), state by state, with a
clock the test controls. It can be made unavailable (`down = True`) to stand in for a Postgres
outage: every call then raises `ConnectionError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from attribution.lineage import RegisteredAdapter
from attribution.training_jobs import (
    STATES,
    Enqueued,
    KeyReused,
    TrainingCounts,
    TrainingJob,
    TrainingPolicy,
    TrainingRequest,
    TrainingState,
    is_job_id,
    new_job_id,
    storable_error,
)


@dataclasses.dataclass
class _Row:
    job: TrainingJob
    """The job as `get` shows it (replaced on every change)."""
    idempotency_key: str | None
    fingerprint: bytes
    run_after: dt.datetime
    locked_until: dt.datetime | None = None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MemoryTrainingJobs:
    def __init__(
        self, policy: TrainingPolicy | None = None, clock: Callable[[], dt.datetime] = _utcnow
    ) -> None:
        self.policy = policy or TrainingPolicy()
        self.clock = clock
        self.rows: dict[str, _Row] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("training queue unavailable (test)")

    def _secs(self, s: float) -> dt.timedelta:
        return dt.timedelta(seconds=s)

    def _held(self, worker: str, job_id: str) -> _Row | None:
        row = self.rows.get(job_id)
        if row is None or row.job.state != "running" or row.job.locked_by != worker:
            return None
        return row

    def _set(self, row: _Row, **changes: object) -> None:
        row.job = dataclasses.replace(row.job, updated_at=self.clock(), **changes)  # type: ignore[arg-type]

    async def enqueue(
        self, request: TrainingRequest, *, idempotency_key: str | None = None
    ) -> Enqueued:
        self._check()
        fingerprint = request.fingerprint()
        if idempotency_key is not None:
            for row in self.rows.values():
                if row.idempotency_key == idempotency_key:
                    if row.fingerprint != fingerprint:
                        raise KeyReused(idempotency_key)
                    return Enqueued(row.job, replayed=True)
        now = self.clock()
        job = TrainingJob(
            id=new_job_id(), request=request, state="queued", attempts=0, step=0, loss=None,
            error=None, error_type=None, result=None, created_at=now, updated_at=now,
        )  # fmt: skip
        self.rows[job.id] = _Row(job, idempotency_key, fingerprint, run_after=now)
        return Enqueued(job, replayed=False)

    async def get(self, job_id: str) -> TrainingJob | None:
        self._check()
        row = self.rows.get(job_id) if is_job_id(job_id) else None
        return None if row is None else row.job

    async def claim(self, worker: str) -> TrainingJob | None:
        self._check()
        now = self.clock()
        due = [
            r
            for r in self.rows.values()
            if (r.job.state == "queued" and r.run_after <= now)
            or (r.job.state == "running" and r.locked_until is not None and r.locked_until < now)
        ]
        if not due:
            return None
        row = min(due, key=lambda r: (r.run_after, r.job.created_at, r.job.id))
        row.locked_until = now + self._secs(self.policy.lease_s)
        self._set(row, state="running", locked_by=worker, attempts=row.job.attempts + 1, step=0,
                  loss=None)  # fmt: skip
        return row.job

    async def heartbeat(
        self, worker: str, job_id: str, *, step: int | None = None, loss: float | None = None
    ) -> bool:
        self._check()
        row = self._held(worker, job_id)
        if row is None:
            return False
        row.locked_until = self.clock() + self._secs(self.policy.lease_s)
        self._set(
            row,
            step=row.job.step if step is None else step,
            loss=row.job.loss if loss is None else loss,
        )
        return True

    async def succeed(
        self, worker: str, job_id: str, adapter: RegisteredAdapter, *, step: int | None = None,
        loss: float | None = None,
    ) -> bool:  # fmt: skip
        self._check()
        row = self._held(worker, job_id)
        if row is None:
            return False
        row.locked_until = None
        self._set(
            row, state="succeeded", result=adapter, error=None, error_type=None, locked_by=None,
            step=row.job.step if step is None else step,
            loss=row.job.loss if loss is None else loss,
        )  # fmt: skip
        return True

    async def fail(
        self, worker: str, job_id: str, error: str, *, error_type: str, permanent: bool
    ) -> TrainingState | None:
        self._check()
        row = self._held(worker, job_id)
        if row is None:
            return None
        attempts = row.job.attempts
        state: TrainingState = (
            "failed" if permanent or attempts >= self.policy.max_attempts else "queued"
        )
        row.locked_until = None
        row.run_after = self.clock() + self._secs(self.policy.backoff_s(attempts))
        self._set(row, state=state, error=storable_error(error),
                  error_type=storable_error(error_type)[:200], locked_by=None)  # fmt: skip
        return state

    async def release(self, worker: str, job_id: str) -> bool:
        self._check()
        row = self._held(worker, job_id)
        if row is None:
            return False
        row.locked_until = None
        row.run_after = self.clock()
        self._set(row, state="queued", attempts=max(row.job.attempts - 1, 0), locked_by=None)
        return True

    async def counts(self) -> TrainingCounts:
        self._check()
        by_state: dict[str, int] = {s: 0 for s in STATES}
        for r in self.rows.values():
            by_state[r.job.state] += 1
        queued = [r.job.created_at for r in self.rows.values() if r.job.state == "queued"]
        oldest = (self.clock() - min(queued)).total_seconds() if queued else None
        return TrainingCounts(by_state, oldest)
