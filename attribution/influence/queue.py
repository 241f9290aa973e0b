"""The influence job queue: one job per answered adapter response, in Postgres.

Life of a job (`influence_jobs`, migration 0010):

    queued --CLAIM--> running --COMPLETE--> done (result in `influence_results`)
                         |  \\--FINISH----> done (no result: no index, ...) | expired | failed
                         |--FAIL--------> queued again after a backoff, or failed after N tries
                         |--POSTPONE----> queued again after a delay, attempt not counted
                         `--lease runs out (worker killed) -> claimable again by anyone

- ENQUEUE is a batch insert, idempotent by request id (a replayed batch adds nothing).
- CLAIM takes due jobs with `FOR UPDATE SKIP LOCKED`, so any number of workers share the
  queue without taking the same job; it leases them until `locked_until` and counts the
  attempt. A running job whose lease ran out is claimable again: a worker killed with
  kill -9 loses nothing, its job is redone after the lease (HEARTBEAT extends it while a
  worker is alive). Every state change after CLAIM is conditional on the caller still
  holding the lease, so a worker that lost its job cannot finish it twice.
- Privacy: prompt and output text live only in this table, and only as long as the job
  needs them. Finishing a job (any way) deletes them unless a retention is configured
  (`QueuePolicy.retention_s`, default 0); SWEEP deletes text past `text_expires_at` in any
  state, so a job that never finishes does not keep its text past `max_text_age_s` either
  (a queued job whose text is gone expires: there is nothing left to score).

`PostgresInfluenceQueue` is the implementation; `MemoryInfluenceQueue`
(`attribution.influence.queue_memory`) the in-memory double for unit tests.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

JobState = Literal["queued", "running", "done", "failed", "expired"]
STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "expired")
TEXT_EXPIRED = "text retention passed before the job ran"


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    lease_s: float = 60.0
    """How long a claim holds a job without a heartbeat."""
    max_attempts: int = 5
    """Failed scoring attempts (and lost leases) before a job is `failed`."""
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    retention_s: float = 0.0
    """Prompt and output text kept after a job finishes; 0 deletes them as it finishes."""
    max_text_age_s: float = 7 * 86400.0
    """Text of a job that has not finished by then is deleted anyway (and the job expires)."""

    def backoff_s(self, attempts: int) -> float:
        """Delay before retrying a job that failed its `attempts`-th try (exponential)."""
        return float(min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(attempts - 1, 0)))


@dataclass(frozen=True, slots=True)
class NewJob:
    request_id: str
    adapter: str
    account_id: int
    prompt: str | list[Any]
    output: str
    attribution: dict[str, Any] | None
    """The inline (span) attribution the response carried: what influence refines."""
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    """When the response started (its usage event's time): the job belongs to that month, the
    month its credits post to, so that month's close waits for it even when the job is queued
    after midnight. None: the month of `created_at`."""

    @property
    def month(self) -> dt.date:
        return month_of(self.started_at or self.created_at)


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    request_id: str
    adapter: str
    account_id: int
    month: dt.date
    created_at: dt.datetime
    attempts: int
    """Including this one."""
    attribution: dict[str, Any] | None
    prompt: str | list[Any] | None
    """None once the retention deleted it."""
    output: str | None


@dataclass(frozen=True, slots=True)
class JobResult:
    method: str
    """The scorer's versioned method."""
    weights_version: str
    refined_method: str
    """What the refined weights rest on: "spans+influence", "influence", "baseline", ..."""
    top_records: list[dict[str, Any]]
    contributors: list[dict[str, Any]]
    """[{"id", "weight", "weight_ppm"}], weight_ppm summing to 1,000,000."""
    seconds: float
    adjustment_txn: int | None
    """The ledger adjustment posted, or None when the weights changed nothing."""


@dataclass(frozen=True, slots=True)
class JobView:
    request_id: str
    adapter: str
    state: JobState
    attempts: int
    last_error: str | None
    note: str | None
    has_text: bool
    result: JobResult | None


@dataclass(frozen=True, slots=True)
class QueueCounts:
    by_state: dict[str, int] = field(default_factory=dict)
    oldest_queued_s: float | None = None

    @property
    def depth(self) -> int:
        """Jobs not finished yet (queued or running)."""
        return self.by_state.get("queued", 0) + self.by_state.get("running", 0)


class InfluenceQueue(Protocol):
    policy: QueuePolicy

    async def enqueue(self, jobs: Sequence[NewJob]) -> int:
        """Insert jobs (one per request id, duplicates ignored); returns how many are new."""
        ...

    async def claim(
        self, worker: str, *, limit: int = 1, month: dt.date | None = None
    ) -> list[ClaimedJob]:
        """Lease up to `limit` due jobs (of `month` or earlier when given)."""
        ...

    async def heartbeat(self, worker: str, request_ids: Sequence[str]) -> int: ...

    async def complete(self, worker: str, request_id: str, result: JobResult) -> bool:
        """Store the result and finish the job `done`; False if the lease was lost."""
        ...

    async def finish(
        self, worker: str, request_id: str, state: JobState, *, note: str | None = None,
        error: str | None = None,
    ) -> bool:  # fmt: skip
        """Finish without a result: `done` (with a note), `expired` or `failed`."""
        ...

    async def fail(self, worker: str, request_id: str, error: str) -> JobState:
        """A failed attempt: back to `queued` after a backoff, or `failed` after the last."""
        ...

    async def postpone(self, worker: str, request_id: str, delay_s: float, reason: str) -> bool:
        """Back to `queued` after `delay_s`; the attempt does not count."""
        ...

    async def expire_month(self, month: dt.date, reason: str) -> int:
        """Expire the unfinished jobs of `month` and earlier (not those leased right now)."""
        ...

    async def sweep(self) -> int:
        """Delete text past its expiry (any state); returns how many jobs lost text."""
        ...

    async def counts(self, *, month: dt.date | None = None) -> QueueCounts:
        """Jobs by state (of `month` and earlier when given), and the oldest queued job's age."""
        ...

    async def depth(self) -> int:
        """Unfinished jobs (queued or running): cheap, from the partial indexes."""
        ...

    async def view(self, request_id: str) -> JobView | None: ...


def month_of(when: dt.datetime) -> dt.date:
    return when.astimezone(dt.UTC).date().replace(day=1)


# --- SQL ------------------------------------------------------------------------------------
ENQUEUE = text(
    """
    INSERT INTO influence_jobs (
        request_id, adapter, account_id, month, created_at, attribution, prompt, output,
        text_expires_at
    )
    SELECT j.request_id, j.adapter, j.account_id,
           j.month, j.created_at,
           CAST(j.attribution AS jsonb), CAST(j.prompt AS jsonb), j.output,
           j.created_at + make_interval(secs => CAST(:max_text_age_s AS double precision))
    FROM unnest(
        CAST(:request_ids AS text[]), CAST(:adapters AS text[]), CAST(:accounts AS bigint[]),
        CAST(:months AS date[]), CAST(:created AS timestamptz[]), CAST(:attributions AS text[]),
        CAST(:prompts AS text[]), CAST(:outputs AS text[])
    ) AS j (request_id, adapter, account_id, month, created_at, attribution, prompt, output)
    ON CONFLICT (request_id) DO NOTHING
    """
)

# Due: queued and past its run_after, or running with a lease that ran out (its worker died).
CLAIM = text(
    """
    WITH due AS (
        SELECT request_id FROM influence_jobs
        WHERE ((state = 'queued' AND run_after <= now())
               OR (state = 'running' AND locked_until < now()))
          AND (CAST(:month AS date) IS NULL OR month <= CAST(:month AS date))
        ORDER BY run_after, request_id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE influence_jobs j
    SET state = 'running', locked_by = :worker, attempts = j.attempts + 1,
        locked_until = now() + make_interval(secs => CAST(:lease_s AS double precision))
    FROM due WHERE j.request_id = due.request_id
    RETURNING j.request_id, j.adapter, j.account_id, j.month, j.created_at, j.attempts,
              j.attribution::text AS attribution, j.prompt::text AS prompt, j.output
    """
)

HEARTBEAT = text(
    """
    UPDATE influence_jobs
    SET locked_until = now() + make_interval(secs => CAST(:lease_s AS double precision))
    WHERE request_id = ANY(CAST(:request_ids AS text[])) AND locked_by = :worker
      AND state = 'running'
    """
)

# Finishing deletes the text unless a retention is configured (then the sweep deletes it).
_FINISHED = """
    finished_at = now(), locked_by = NULL, locked_until = NULL,
    prompt = CASE WHEN CAST(:retention_s AS double precision) > 0 THEN prompt END,
    output = CASE WHEN CAST(:retention_s AS double precision) > 0 THEN output END,
    text_expires_at = CASE WHEN CAST(:retention_s AS double precision) > 0
        THEN now() + make_interval(secs => CAST(:retention_s AS double precision)) END
"""
_HELD = "request_id = :request_id AND locked_by = :worker AND state = 'running'"

FINISH = text(
    f"""
    UPDATE influence_jobs SET state = :state, last_error = :error, note = :note, {_FINISHED}
    WHERE {_HELD}
    """  # noqa: S608 (fixed SQL fragments, no input)
)

INSERT_RESULT = text(
    """
    INSERT INTO influence_results (
        request_id, adapter, method, weights_version, refined_method, top_records,
        contributors, seconds, adjustment_txn
    )
    SELECT request_id, adapter, :method, :weights_version, :refined_method,
           CAST(:top_records AS jsonb), CAST(:contributors AS jsonb), :seconds, :adjustment_txn
    FROM influence_jobs WHERE request_id = :request_id
    ON CONFLICT (request_id) DO UPDATE SET
        method = EXCLUDED.method, weights_version = EXCLUDED.weights_version,
        refined_method = EXCLUDED.refined_method, top_records = EXCLUDED.top_records,
        contributors = EXCLUDED.contributors, seconds = EXCLUDED.seconds,
        adjustment_txn = coalesce(EXCLUDED.adjustment_txn, influence_results.adjustment_txn),
        created_at = now()
    """
)

# A failed attempt: retried after a backoff, or failed for good after the last attempt.
FAIL = text(
    f"""
    UPDATE influence_jobs SET
        last_error = :error,
        state = CASE WHEN attempts >= :max_attempts THEN 'failed' ELSE 'queued' END,
        run_after = now() + make_interval(secs => least(
            CAST(:backoff_cap_s AS double precision),
            CAST(:backoff_base_s AS double precision) * power(2, greatest(attempts - 1, 0)))),
        locked_by = NULL, locked_until = NULL,
        finished_at = CASE WHEN attempts >= :max_attempts THEN now() END,
        prompt = CASE WHEN attempts < :max_attempts
            OR CAST(:retention_s AS double precision) > 0 THEN prompt END,
        output = CASE WHEN attempts < :max_attempts
            OR CAST(:retention_s AS double precision) > 0 THEN output END,
        text_expires_at = CASE WHEN attempts < :max_attempts THEN text_expires_at
            WHEN CAST(:retention_s AS double precision) > 0
            THEN now() + make_interval(secs => CAST(:retention_s AS double precision)) END
    WHERE {_HELD}
    RETURNING state
    """  # noqa: S608 (fixed SQL fragments, no input)
)

POSTPONE = text(
    f"""
    UPDATE influence_jobs SET
        state = 'queued', attempts = greatest(attempts - 1, 0), note = :reason,
        run_after = now() + make_interval(secs => CAST(:delay_s AS double precision)),
        locked_by = NULL, locked_until = NULL
    WHERE {_HELD}
    """  # noqa: S608 (fixed SQL fragments, no input)
)

EXPIRE_MONTH = text(
    """
    UPDATE influence_jobs SET state = 'expired', last_error = :reason, finished_at = now(),
        locked_by = NULL, locked_until = NULL, prompt = NULL, output = NULL,
        text_expires_at = NULL
    WHERE month <= CAST(:month AS date)
      AND (state = 'queued' OR (state = 'running' AND locked_until < now()))
    """
)

# Any state: text past its expiry goes; a queued job that loses it can never run.
SWEEP = text(
    """
    UPDATE influence_jobs SET
        prompt = NULL, output = NULL,
        last_error = CASE WHEN state = 'queued' THEN :reason ELSE last_error END,
        finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
        state = CASE WHEN state = 'queued' THEN 'expired' ELSE state END
    WHERE text_expires_at <= now() AND (prompt IS NOT NULL OR output IS NOT NULL)
    """
)

COUNTS = text(
    """
    SELECT state, count(*) AS n,
           extract(epoch FROM now() - min(created_at)) AS oldest_s
    FROM influence_jobs
    WHERE CAST(:month AS date) IS NULL OR month <= CAST(:month AS date)
    GROUP BY state
    """
)

# Both counts come from the partial indexes CLAIM uses: no scan of finished jobs.
DEPTH = text(
    """
    SELECT (SELECT count(*) FROM influence_jobs WHERE state = 'queued')
         + (SELECT count(*) FROM influence_jobs WHERE state = 'running')
    """
)

VIEW = text(
    """
    SELECT j.request_id, j.adapter, j.state, j.attempts, j.last_error, j.note,
           (j.prompt IS NOT NULL OR j.output IS NOT NULL) AS has_text,
           r.method, r.weights_version, r.refined_method, r.top_records::text AS top_records,
           r.contributors::text AS contributors, r.seconds, r.adjustment_txn
    FROM influence_jobs j LEFT JOIN influence_results r ON r.request_id = j.request_id
    WHERE j.request_id = :request_id
    """
)


class _LeaseLost(Exception):
    pass


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class PostgresInfluenceQueue:
    def __init__(self, engine: AsyncEngine, policy: QueuePolicy | None = None) -> None:
        self.engine = engine
        self.policy = policy or QueuePolicy()

    async def enqueue(self, jobs: Sequence[NewJob]) -> int:
        if not jobs:
            return 0
        params = {
            "request_ids": [j.request_id for j in jobs],
            "adapters": [j.adapter for j in jobs],
            "accounts": [j.account_id for j in jobs],
            "months": [j.month for j in jobs],
            "created": [j.created_at for j in jobs],
            "attributions": [_json(j.attribution) for j in jobs],
            "prompts": [_json(j.prompt) for j in jobs],
            "outputs": [j.output for j in jobs],
            "max_text_age_s": self.policy.max_text_age_s,
        }
        async with self.engine.begin() as conn:
            return (await conn.execute(ENQUEUE, params)).rowcount

    async def claim(
        self, worker: str, *, limit: int = 1, month: dt.date | None = None
    ) -> list[ClaimedJob]:
        params = {"worker": worker, "limit": limit, "month": month, "lease_s": self.policy.lease_s}
        async with self.engine.begin() as conn:
            rows = (await conn.execute(CLAIM, params)).all()
        return [
            ClaimedJob(
                request_id=r.request_id,
                adapter=r.adapter,
                account_id=r.account_id,
                month=r.month,
                created_at=r.created_at,
                attempts=r.attempts,
                attribution=_loads(r.attribution),
                prompt=_loads(r.prompt),
                output=r.output,
            )
            for r in rows
        ]

    async def heartbeat(self, worker: str, request_ids: Sequence[str]) -> int:
        params = {
            "worker": worker,
            "request_ids": list(request_ids),
            "lease_s": self.policy.lease_s,
        }
        async with self.engine.begin() as conn:
            return (await conn.execute(HEARTBEAT, params)).rowcount

    async def complete(self, worker: str, request_id: str, result: JobResult) -> bool:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    INSERT_RESULT,
                    {
                        "request_id": request_id,
                        "method": result.method,
                        "weights_version": result.weights_version,
                        "refined_method": result.refined_method,
                        "top_records": _json(result.top_records),
                        "contributors": _json(result.contributors),
                        "seconds": result.seconds,
                        "adjustment_txn": result.adjustment_txn,
                    },
                )
                done = await conn.execute(FINISH, self._finish(worker, request_id, "done"))
                if done.rowcount != 1:
                    raise _LeaseLost
        except _LeaseLost:  # rolled back: whoever holds the job now stores its own result
            return False
        return True

    async def finish(
        self, worker: str, request_id: str, state: JobState, *, note: str | None = None,
        error: str | None = None,
    ) -> bool:  # fmt: skip
        if state not in ("done", "expired", "failed"):
            raise ValueError(f"a job cannot finish as {state!r}")
        params = self._finish(worker, request_id, state, note=note, error=error)
        async with self.engine.begin() as conn:
            return (await conn.execute(FINISH, params)).rowcount == 1

    def _finish(
        self, worker: str, request_id: str, state: str, *, note: str | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return {
            "worker": worker, "request_id": request_id, "state": state, "note": note,
            "error": error, "retention_s": self.policy.retention_s,
        }  # fmt: skip

    async def fail(self, worker: str, request_id: str, error: str) -> JobState:
        p = self.policy
        params = {
            "worker": worker, "request_id": request_id, "error": error[:2000],
            "max_attempts": p.max_attempts, "backoff_base_s": p.backoff_base_s,
            "backoff_cap_s": p.backoff_cap_s, "retention_s": p.retention_s,
        }  # fmt: skip
        async with self.engine.begin() as conn:
            state = (await conn.execute(FAIL, params)).scalar()
        return state if state is not None else "running"

    async def postpone(self, worker: str, request_id: str, delay_s: float, reason: str) -> bool:
        params = {"worker": worker, "request_id": request_id, "delay_s": delay_s, "reason": reason}
        async with self.engine.begin() as conn:
            return (await conn.execute(POSTPONE, params)).rowcount == 1

    async def expire_month(self, month: dt.date, reason: str) -> int:
        async with self.engine.begin() as conn:
            return (await conn.execute(EXPIRE_MONTH, {"month": month, "reason": reason})).rowcount

    async def sweep(self) -> int:
        async with self.engine.begin() as conn:
            return (await conn.execute(SWEEP, {"reason": TEXT_EXPIRED})).rowcount

    async def counts(self, *, month: dt.date | None = None) -> QueueCounts:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(COUNTS, {"month": month})).all()
        by_state: dict[str, int] = {s: 0 for s in STATES}
        oldest = None
        for r in rows:
            by_state[r.state] = int(r.n)
            if r.state == "queued":
                oldest = float(r.oldest_s)
        return QueueCounts(by_state, oldest)

    async def depth(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(DEPTH)).scalar_one())

    async def view(self, request_id: str) -> JobView | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(VIEW, {"request_id": request_id})).first()
        if r is None:
            return None
        result = None
        if r.method is not None:
            result = JobResult(
                method=r.method,
                weights_version=r.weights_version,
                refined_method=r.refined_method,
                top_records=_loads(r.top_records),
                contributors=_loads(r.contributors),
                seconds=r.seconds,
                adjustment_txn=r.adjustment_txn,
            )
        return JobView(
            r.request_id, r.adapter, r.state, r.attempts, r.last_error, r.note, r.has_text, result
        )
