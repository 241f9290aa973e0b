"""The adapter training queue: one job per `POST /v1/adapters`, in Postgres, run by training
workers (`royalty training worker`), read by any gateway.

Life of a job (`training_jobs`, migration 0014):

    queued --CLAIM--> running --SUCCEED--> succeeded (the registered adapter in `result`)
                         |--FAIL---------> queued again after a backoff (transient), or
                         |                 failed (permanent: no datanet, bad snapshot, name
                         |                 taken; or the last attempt)
                         |--RELEASE------> queued again at once, attempt not counted (stopped)
                         `--lease runs out (worker killed) -> claimable again by anyone

- ENQUEUE inserts a job; with an idempotency key, at most one job per key: the same key with
  the same request returns the first job (`Enqueued.replayed`), with another request it
  raises `KeyReused`. Keys are kept as long as their job (jobs are small and few).
- CLAIM takes the oldest due job with `FOR UPDATE SKIP LOCKED`, so any number of workers share
  the queue without taking the same job; it leases it until `locked_until`, counts the
  attempt and resets the progress. A running job whose lease ran out is claimable again: a
  worker killed with kill -9 loses nothing, its job is trained again after the lease
  (HEARTBEAT extends it, and stores the progress, while a worker is alive). Training is
  deterministic and cached by content, and registering the same build twice is a no-op
  (`LineageService.register`), so a redone job registers one adapter.
- Every state change after CLAIM is conditional on the caller still holding the lease, so a
  worker that lost its job cannot finish it twice.
- A job that keeps killing its worker is claimed more than `max_attempts` times; the worker
  that sees that fails it for good instead of training it again.

`PostgresTrainingJobs` is the implementation; `MemoryTrainingJobs`
(`attribution.training_jobs_memory`) the in-memory double for unit tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.lineage import RegisteredAdapter
from core.sqlstate import storable_text

TrainingState = Literal["queued", "running", "succeeded", "failed"]
STATES: tuple[TrainingState, ...] = ("queued", "running", "succeeded", "failed")
MAX_ERROR_CHARS = 4000

_JOB_ID = re.compile(r"ftjob-[0-9a-f]{16}")


def new_job_id() -> str:
    return "ftjob-" + secrets.token_hex(8)


def is_job_id(value: str) -> bool:
    """Whether `value` can name a job (anything else is unknown without asking the store)."""
    return _JOB_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class TrainingPolicy:
    lease_s: float = 60.0
    """How long a claim holds a job without a heartbeat (workers beat every second)."""
    max_attempts: int = 3
    """Attempts (failed with a transient error, or lost with their worker) before `failed`."""
    backoff_base_s: float = 30.0
    backoff_cap_s: float = 900.0

    def backoff_s(self, attempts: int) -> float:
        """Delay before retrying a job that failed its `attempts`-th try (exponential)."""
        return float(min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(attempts - 1, 0)))


@dataclass(frozen=True, slots=True)
class TrainingRequest:
    """What `POST /v1/adapters` asks for, validated by the gateway."""

    datanet: str
    adapter: str
    owner: str
    """The owning account's name (created when the job runs, if new)."""
    snapshot_id: str | None = None
    """None: the datanet's latest snapshot when the job runs."""
    steps: int | None = None
    """None: the recipe's default."""
    replace: bool = False

    def fingerprint(self) -> bytes:
        """What an idempotency key is bound to: the request's meaning, field by field."""
        doc = [self.datanet, self.adapter, self.owner, self.snapshot_id, self.steps, self.replace]
        return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).digest()


@dataclass(frozen=True, slots=True)
class TrainingJob:
    id: str
    request: TrainingRequest
    state: TrainingState
    attempts: int
    """Claims so far (including the one running now)."""
    step: int
    """Training steps done in the current attempt."""
    loss: float | None
    error: str | None
    """The last attempt's error (kept while a retry waits, and on `failed`)."""
    error_type: str | None
    result: RegisteredAdapter | None
    """The registered adapter, once `succeeded`."""
    created_at: dt.datetime
    updated_at: dt.datetime
    locked_by: str | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    job: TrainingJob
    replayed: bool
    """The idempotency key was used before, with the same request: `job` is that first job."""


@dataclass(frozen=True, slots=True)
class TrainingCounts:
    by_state: dict[str, int] = field(default_factory=dict)
    oldest_queued_s: float | None = None

    @property
    def depth(self) -> int:
        return self.by_state.get("queued", 0) + self.by_state.get("running", 0)


class KeyReused(Exception):
    """An idempotency key already used for a different training request."""


class TrainingJobs(Protocol):
    policy: TrainingPolicy

    async def enqueue(
        self, request: TrainingRequest, *, idempotency_key: str | None = None
    ) -> Enqueued:
        """A new queued job, or the key's first job (`KeyReused` for another request)."""
        ...

    async def get(self, job_id: str) -> TrainingJob | None: ...

    async def claim(self, worker: str) -> TrainingJob | None:
        """Lease the oldest due job (queued, or running with a lease that ran out)."""
        ...

    async def heartbeat(
        self, worker: str, job_id: str, *, step: int | None = None, loss: float | None = None
    ) -> bool:
        """Extend the lease and store the progress; False if the lease was lost."""
        ...

    async def succeed(
        self, worker: str, job_id: str, adapter: RegisteredAdapter, *, step: int | None = None,
        loss: float | None = None,
    ) -> bool:  # fmt: skip
        """Finish `succeeded` with the registered adapter and the final progress; False if
        the lease was lost."""
        ...

    async def fail(
        self, worker: str, job_id: str, error: str, *, error_type: str, permanent: bool
    ) -> TrainingState | None:
        """A failed attempt: `queued` again after a backoff, or `failed` when `permanent` or
        after the last attempt. None if the lease was lost."""
        ...

    async def release(self, worker: str, job_id: str) -> bool:
        """Back to `queued` at once, the attempt not counted (the worker is stopping)."""
        ...

    async def counts(self) -> TrainingCounts: ...


# --- SQL ------------------------------------------------------------------------------------
_COLUMNS = """
    id, idempotency_key, datanet, adapter, owner, snapshot_id, steps, replace, state, attempts,
    step, loss, error, error_type, result::text AS result, created_at, updated_at, locked_by
"""

ENQUEUE = text(
    f"""
    INSERT INTO training_jobs (
        id, idempotency_key, request_sha256, datanet, adapter, owner, snapshot_id, steps, replace
    ) VALUES (
        :id, :idempotency_key, :request_sha256, :datanet, :adapter, :owner, :snapshot_id,
        :steps, :replace
    )
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING {_COLUMNS}
    """  # noqa: S608 (fixed SQL fragments, no input)
)

# The key's job, after ENQUEUE found it taken (ON CONFLICT waited for its transaction).
SELECT_BY_KEY = text(
    f"""
    SELECT request_sha256, {_COLUMNS} FROM training_jobs WHERE idempotency_key = :key
    """  # noqa: S608 (fixed SQL fragments, no input)
)

SELECT_JOB = text(f"SELECT {_COLUMNS} FROM training_jobs WHERE id = :id")  # noqa: S608

# Due: queued and past its run_after, or running with a lease that ran out (its worker died).
CLAIM = text(
    f"""
    WITH due AS (
        SELECT id AS due_id FROM training_jobs
        WHERE (state = 'queued' AND run_after <= now())
           OR (state = 'running' AND locked_until < now())
        ORDER BY run_after, created_at, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE training_jobs j
    SET state = 'running', locked_by = :worker, attempts = j.attempts + 1, step = 0,
        loss = NULL, updated_at = now(),
        locked_until = now() + make_interval(secs => CAST(:lease_s AS double precision))
    FROM due WHERE j.id = due.due_id
    RETURNING {_COLUMNS}
    """  # noqa: S608 (fixed SQL fragments, no input)
)

_HELD = "id = :id AND locked_by = :worker AND state = 'running'"

HEARTBEAT = text(
    f"""
    UPDATE training_jobs SET
        locked_until = now() + make_interval(secs => CAST(:lease_s AS double precision)),
        step = coalesce(CAST(:step AS integer), step),
        loss = coalesce(CAST(:loss AS double precision), loss),
        updated_at = now()
    WHERE {_HELD}
    """  # noqa: S608 (fixed SQL fragments, no input)
)

SUCCEED = text(
    f"""
    UPDATE training_jobs SET
        state = 'succeeded', result = CAST(:result AS jsonb), lineage_sha256 = :lineage_sha256,
        step = coalesce(CAST(:step AS integer), step),
        loss = coalesce(CAST(:loss AS double precision), loss),
        error = NULL, error_type = NULL, locked_by = NULL, locked_until = NULL,
        finished_at = now(), updated_at = now()
    WHERE {_HELD}
    """  # noqa: S608 (fixed SQL fragments, no input)
)

# A failed attempt: retried after a backoff, or failed for good (permanent, or the last).
FAIL = text(
    f"""
    UPDATE training_jobs SET
        error = :error, error_type = :error_type,
        state = CASE WHEN :permanent OR attempts >= :max_attempts THEN 'failed' ELSE 'queued' END,
        run_after = now() + make_interval(secs => least(
            CAST(:backoff_cap_s AS double precision),
            CAST(:backoff_base_s AS double precision) * power(2, greatest(attempts - 1, 0)))),
        finished_at = CASE WHEN :permanent OR attempts >= :max_attempts THEN now() END,
        locked_by = NULL, locked_until = NULL, updated_at = now()
    WHERE {_HELD}
    RETURNING state
    """  # noqa: S608 (fixed SQL fragments, no input)
)

RELEASE = text(
    f"""
    UPDATE training_jobs SET
        state = 'queued', attempts = greatest(attempts - 1, 0), run_after = now(),
        locked_by = NULL, locked_until = NULL, updated_at = now()
    WHERE {_HELD}
    """  # noqa: S608 (fixed SQL fragments, no input)
)

COUNTS = text(
    """
    SELECT state, count(*) AS n, extract(epoch FROM now() - min(created_at)) AS oldest_s
    FROM training_jobs GROUP BY state
    """
)


def _job(r: Any) -> TrainingJob:
    request = TrainingRequest(
        datanet=r.datanet, adapter=r.adapter, owner=r.owner, snapshot_id=r.snapshot_id,
        steps=r.steps, replace=r.replace,
    )  # fmt: skip
    result = None
    if r.result is not None:
        result = msgspec.convert(json.loads(r.result), RegisteredAdapter)
    return TrainingJob(
        id=r.id, request=request, state=r.state, attempts=r.attempts, step=r.step, loss=r.loss,
        error=r.error, error_type=r.error_type, result=result, created_at=r.created_at,
        updated_at=r.updated_at, locked_by=r.locked_by,
    )  # fmt: skip


def storable_error(message: str) -> str:
    """An error message as the table keeps it: no NUL, valid UTF-8, capped."""
    return storable_text(message)[:MAX_ERROR_CHARS]


class PostgresTrainingJobs:
    def __init__(self, engine: AsyncEngine, policy: TrainingPolicy | None = None) -> None:
        self.engine = engine
        self.policy = policy or TrainingPolicy()

    async def enqueue(
        self, request: TrainingRequest, *, idempotency_key: str | None = None
    ) -> Enqueued:
        fingerprint = request.fingerprint()
        params = {
            "id": new_job_id(), "idempotency_key": idempotency_key,
            "request_sha256": fingerprint, "datanet": request.datanet,
            "adapter": request.adapter, "owner": request.owner,
            "snapshot_id": request.snapshot_id, "steps": request.steps,
            "replace": request.replace,
        }  # fmt: skip
        async with self.engine.begin() as conn:
            row = (await conn.execute(ENQUEUE, params)).first()
            if row is not None:
                return Enqueued(_job(row), replayed=False)
            first = (await conn.execute(SELECT_BY_KEY, {"key": idempotency_key})).one()
        if bytes(first.request_sha256) != fingerprint:
            raise KeyReused(idempotency_key)
        return Enqueued(_job(first), replayed=True)

    async def get(self, job_id: str) -> TrainingJob | None:
        if not is_job_id(job_id):
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(SELECT_JOB, {"id": job_id})).first()
        return None if row is None else _job(row)

    async def claim(self, worker: str) -> TrainingJob | None:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(CLAIM, {"worker": worker, "lease_s": self.policy.lease_s})
            ).first()
        return None if row is None else _job(row)

    async def heartbeat(
        self, worker: str, job_id: str, *, step: int | None = None, loss: float | None = None
    ) -> bool:
        params = {
            "worker": worker, "id": job_id, "lease_s": self.policy.lease_s, "step": step,
            "loss": loss,
        }  # fmt: skip
        async with self.engine.begin() as conn:
            return (await conn.execute(HEARTBEAT, params)).rowcount == 1

    async def succeed(
        self, worker: str, job_id: str, adapter: RegisteredAdapter, *, step: int | None = None,
        loss: float | None = None,
    ) -> bool:  # fmt: skip
        params = {
            "worker": worker, "id": job_id, "lineage_sha256": adapter.lineage_sha256,
            "result": msgspec.json.encode(adapter).decode(), "step": step, "loss": loss,
        }  # fmt: skip
        async with self.engine.begin() as conn:
            return (await conn.execute(SUCCEED, params)).rowcount == 1

    async def fail(
        self, worker: str, job_id: str, error: str, *, error_type: str, permanent: bool
    ) -> TrainingState | None:
        p = self.policy
        params = {
            "worker": worker, "id": job_id, "error": storable_error(error),
            "error_type": storable_error(error_type)[:200], "permanent": permanent,
            "max_attempts": p.max_attempts, "backoff_base_s": p.backoff_base_s,
            "backoff_cap_s": p.backoff_cap_s,
        }  # fmt: skip
        async with self.engine.begin() as conn:
            state: TrainingState | None = (await conn.execute(FAIL, params)).scalar()
        return state

    async def release(self, worker: str, job_id: str) -> bool:
        async with self.engine.begin() as conn:
            return (await conn.execute(RELEASE, {"worker": worker, "id": job_id})).rowcount == 1

    async def counts(self) -> TrainingCounts:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(COUNTS)).all()
        by_state: dict[str, int] = {s: 0 for s in STATES}
        oldest = None
        for r in rows:
            by_state[r.state] = int(r.n)
            if r.state == "queued":
                oldest = float(r.oldest_s)
        return TrainingCounts(by_state, oldest)
