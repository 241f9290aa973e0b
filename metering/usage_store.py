"""Where shipped usage records end up: the `usage_events` table, or an in-memory stand-in.

`insert_batch` must be idempotent per request id: the shipper replays a batch whenever it
cannot prove the previous attempt committed (a crash between the commit and the cursor write,
a connection lost while awaiting COMMIT), and the table's primary key turns replays into
no-ops. That, plus the shipper advancing its cursor only after a commit, makes every record
land exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import asyncpg
import msgspec
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.usage import USAGE_COLUMNS, UsageRecord

log = logging.getLogger(__name__)


class UsageStoreUnavailable(Exception):
    """The store cannot be reached right now (or the attempt may be retried as is); the batch
    was not stored, or was stored and will be deduplicated on retry."""


@runtime_checkable
class UsageStore(Protocol):
    async def insert_batch(self, records: Sequence[UsageRecord]) -> int:
        """Store `records`; returns how many were new (replayed request ids are skipped)."""
        ...

    async def count(self) -> int:
        """How many usage events the store holds."""
        ...


# The staging table takes the column types of usage_events but none of its constraints or
# defaults; ON COMMIT DROP keeps it private to one batch (and safe behind a pooler).
CREATE_STAGING_SQL = """
CREATE TEMPORARY TABLE usage_events_staging ON COMMIT DROP AS
SELECT request_id, account_id, key_id, endpoint, model, base_model, adapter, status,
       http_status, prompt_tokens, completion_tokens, started_at, total_ms, ttft_ms,
       output_sha256, error_type, engine, attribution, prompt_digest
FROM usage_events
WITH NO DATA
"""
STAGING_TABLE = "usage_events_staging"

# DISTINCT ON + ORDER BY: a batch may repeat a request id, and concurrent shippers lock keys
# in the same order, so two of them racing over the same rows wait instead of deadlocking.
INSERT_FROM_STAGING_SQL = """
INSERT INTO usage_events (
    request_id, account_id, key_id, endpoint, model, base_model, adapter, status,
    http_status, prompt_tokens, completion_tokens, started_at, total_ms, ttft_ms,
    output_sha256, error_type, engine, attribution, prompt_digest
)
SELECT DISTINCT ON (request_id)
       request_id, account_id, key_id, endpoint, model, base_model, adapter, status,
       http_status, prompt_tokens, completion_tokens, started_at, total_ms, ttft_ms,
       output_sha256, error_type, engine, attribution, prompt_digest
FROM usage_events_staging
ORDER BY request_id
ON CONFLICT (request_id) DO NOTHING
"""

COUNT_SQL = "SELECT count(*) FROM usage_events"

_STAGED_COLUMNS = (
    "request_id",
    "account_id",
    "key_id",
    "endpoint",
    "model",
    "base_model",
    "adapter",
    "status",
    "http_status",
    "prompt_tokens",
    "completion_tokens",
    "started_at",
    "total_ms",
    "ttft_ms",
    "output_sha256",
    "error_type",
    "engine",
    "attribution",
    "prompt_digest",
)
if _STAGED_COLUMNS != USAGE_COLUMNS:  # pragma: no cover - fails at import, on purpose
    raise RuntimeError("usage_store SQL is out of step with UsageRecord's fields")

# SQLSTATEs worth retrying unchanged: lost connections (08), server shutting down or starting
# (57P01-57P03), out of resources (53), and lock conflicts between concurrent shippers (40).
_RETRYABLE_SQLSTATE_PREFIXES = ("08", "53", "57P0", "40001", "40P01")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith(_RETRYABLE_SQLSTATE_PREFIXES)
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        inner = getattr(orig, "__cause__", None) or orig
        return isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError) or (
            inner is not None and inner is not exc and _is_transient(inner)
        )
    return False


class PostgresUsageStore:
    """Ships batches with COPY into a staging table, then one INSERT ... ON CONFLICT."""

    def __init__(self, engine: AsyncEngine, *, timeout_s: float = 30.0) -> None:
        self._engine = engine
        self._timeout_s = timeout_s

    async def insert_batch(self, records: Sequence[UsageRecord]) -> int:
        if not records:
            return 0
        rows = [msgspec.structs.astuple(r) for r in records]
        try:
            # A hung server must not wedge the shipper forever; a timeout is just another
            # failed attempt (if it did commit, the replay is deduplicated).
            async with asyncio.timeout(self._timeout_s):
                return await self._insert_rows(rows)
        except UsageStoreUnavailable:
            raise
        except Exception as exc:
            if _is_transient(exc):
                raise UsageStoreUnavailable(f"usage store unavailable: {exc!r}") from exc
            raise

    async def _insert_rows(self, rows: list[tuple[Any, ...]]) -> int:
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: asyncpg.Connection = raw.driver_connection
            try:
                async with driver.transaction():
                    await driver.execute(CREATE_STAGING_SQL)
                    await driver.copy_records_to_table(
                        STAGING_TABLE, records=rows, columns=_STAGED_COLUMNS
                    )
                    status = await driver.execute(INSERT_FROM_STAGING_SQL)
            except BaseException as exc:
                # SQLAlchemy did not see this failure; without invalidation a dead connection
                # would go back to the pool.
                if not isinstance(exc, Exception) or _is_transient(exc):
                    await conn.invalidate()
                raise
        # "INSERT 0 <rows>"
        return int(status.rsplit(" ", 1)[-1])

    async def count(self) -> int:
        try:
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver: asyncpg.Connection = raw.driver_connection
                value = await driver.fetchval(COUNT_SQL)
        except Exception as exc:
            if _is_transient(exc):
                raise UsageStoreUnavailable(f"usage store unavailable: {exc!r}") from exc
            raise
        return int(value)


class InMemoryUsageStore:
    """The test double: same contract, rows in a dict keyed by request id.

    `fail_next` makes the next N inserts raise `UsageStoreUnavailable` before storing
    anything; `fail_after_commit` makes them store the rows and then raise, like a connection
    lost while awaiting the COMMIT reply.
    """

    def __init__(self) -> None:
        self.rows: dict[str, UsageRecord] = {}
        self.insert_calls = 0
        self.fail_next = 0
        self.fail_after_commit = 0

    async def insert_batch(self, records: Sequence[UsageRecord]) -> int:
        self.insert_calls += 1
        await asyncio.sleep(0)  # a real store always yields; so must the double
        if self.fail_next > 0:
            self.fail_next -= 1
            raise UsageStoreUnavailable("in-memory store: injected outage")
        new = 0
        for r in records:
            if r.request_id not in self.rows:
                self.rows[r.request_id] = r
                new += 1
        if self.fail_after_commit > 0:
            self.fail_after_commit -= 1
            raise UsageStoreUnavailable("in-memory store: injected failure after commit")
        return new

    async def count(self) -> int:
        return len(self.rows)
