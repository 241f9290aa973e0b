"""Where shipped usage records end up: the `usage_events` table, or an in-memory stand-in.

`insert_batch` must be idempotent per request id: the shipper replays a batch whenever it
cannot prove the previous attempt committed (a crash between the commit and the cursor write,
a connection lost while awaiting COMMIT), and the table's primary key turns replays into
no-ops. That, plus the shipper advancing its cursor only after a commit, makes every record
land exactly once.

Failures come in two kinds (`core.sqlstate`): `UsageStoreUnavailable` (transient: retry the
batch as is) and `UsageRejected` (a record in the batch can never be stored as it is, e.g. a
NUL in its text or a model name too long for the index: the shipper splits the batch to find
it and dead-letters it). `replay_dead_letter` stores a dead-lettered record again after
making it storable (`storable_record`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import asyncpg
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from core import deadletters
from core.sqlstate import (
    DataRejected,
    blames_the_data,
    describe,
    is_transient,
    sqlstate_of,
    storable_text,
)
from metering.pg import driver
from metering.usage.record import USAGE_COLUMNS, UsageRecord

log = logging.getLogger(__name__)


class UsageStoreUnavailable(Exception):
    """The store cannot be reached right now (or the attempt may be retried as is); the batch
    was not stored, or was stored and will be deduplicated on retry."""


class UsageRejected(DataRejected):
    """A record in the batch can never be stored as it is; nothing of the batch was stored."""


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

INSERT_ONE_SQL = f"""
INSERT INTO usage_events ({", ".join(USAGE_COLUMNS)})
VALUES ({", ".join(f"${i + 1}" for i in range(len(USAGE_COLUMNS)))})
ON CONFLICT (request_id) DO NOTHING
"""  # noqa: S608 (a fixed column list)
INVALID_MODEL = "<invalid>"
"""What a replayed record's `model` becomes when the name it carried cannot be stored."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(UsageRecord)


def _classified(exc: Exception) -> Exception:
    """What `insert_batch` raises for `exc`: unavailable, rejected, or `exc` itself."""
    if isinstance(exc, UsageStoreUnavailable | UsageRejected):
        return exc
    if is_transient(exc):
        return UsageStoreUnavailable(f"usage store unavailable: {exc!r}")
    if blames_the_data(exc):
        return UsageRejected(f"usage record rejected: {describe(exc)}", sqlstate=sqlstate_of(exc))
    return exc


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
        except Exception as exc:
            raised = _classified(exc)
            if raised is exc:
                raise
            raise raised from exc

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
                if not isinstance(exc, Exception) or is_transient(exc):
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
            if is_transient(exc):
                raise UsageStoreUnavailable(f"usage store unavailable: {exc!r}") from exc
            raise
        return int(value)


class InMemoryUsageStore:
    """The test double: same contract, rows in a dict keyed by request id.

    `fail_next` makes the next N inserts raise `UsageStoreUnavailable` before storing
    anything; `fail_after_commit` makes them store the rows and then raise, like a connection
    lost while awaiting the COMMIT reply. A batch holding a request id in `poison` raises
    `UsageRejected` and stores nothing, like a record Postgres can never take.
    """

    def __init__(self) -> None:
        self.rows: dict[str, UsageRecord] = {}
        self.insert_calls = 0
        self.fail_next = 0
        self.fail_after_commit = 0
        self.poison: set[str] = set()

    async def insert_batch(self, records: Sequence[UsageRecord]) -> int:
        self.insert_calls += 1
        await asyncio.sleep(0)  # a real store always yields; so must the double
        if self.fail_next > 0:
            self.fail_next -= 1
            raise UsageStoreUnavailable("in-memory store: injected outage")
        bad = next((r.request_id for r in records if r.request_id in self.poison), None)
        if bad is not None:
            raise UsageRejected(f"in-memory store: {bad!r} is poison", sqlstate="22021")
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


# --- dead letters ----------------------------------------------------------------------------
def dead_letter_payload(record: UsageRecord) -> bytes:
    """A usage record as the dead-letter store keeps it: its msgpack, as in the usage log."""
    return _encoder.encode(record)


def decode_dead_letter(payload: bytes) -> UsageRecord:
    return _decoder.decode(payload)


def storable_record(record: UsageRecord) -> UsageRecord:
    """`record` with its text made storable: NUL removed and lone surrogates escaped in every
    string, and an `attribution` that is not storable JSON dropped (the baseline applies).
    Token counts, times and the request id's meaning are left as they are."""
    changes: dict[str, Any] = {}
    for name in USAGE_COLUMNS:
        value = getattr(record, name)
        if isinstance(value, str):
            clean = storable_text(value)
            if clean != value:
                changes[name] = clean
    attribution = changes.get("attribution", record.attribution)
    if attribution is not None:
        try:
            fixed = json.dumps(_storable_json(json.loads(attribution)), separators=(",", ":"))
        except ValueError:
            fixed = None
        if fixed != record.attribution:
            changes["attribution"] = fixed
    return msgspec.structs.replace(record, **changes) if changes else record


def _storable_json(value: Any) -> Any:
    # jsonb refuses \u0000 in strings, escaped or not.
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list):
        return [_storable_json(v) for v in value]
    if isinstance(value, dict):
        return {storable_text(str(k)): _storable_json(v) for k, v in value.items()}
    return value


async def replay_dead_letter(engine: AsyncEngine, letter_id: int, note: str) -> UsageRecord:
    """Store dead usage letter `letter_id` again and mark it replayed, in one transaction: the
    record made storable (`storable_record`), and if Postgres still refuses it, with its
    `model` replaced by `INVALID_MODEL` (e.g. a name too long for the index). Returns the
    record as stored (a request id already stored is left as it is). Raises `LookupError`
    when there is no such dead usage letter, `UsageRejected` when even that is refused
    (nothing changes)."""
    async with driver(engine) as conn, conn.transaction():
        letter = await deadletters.resolve_on(conn, letter_id, "replayed", note, queue="usage")
        if letter is None:
            raise LookupError(f"no dead usage letter {letter_id}")
        record = storable_record(decode_dead_letter(letter.payload))
        candidates = [record]
        if record.model != INVALID_MODEL:
            candidates.append(msgspec.structs.replace(record, model=INVALID_MODEL))
        refusal: Exception | None = None
        for candidate in candidates:
            try:
                async with conn.transaction():  # a savepoint: a refusal undoes only this try
                    await conn.execute(INSERT_ONE_SQL, *msgspec.structs.astuple(candidate))
            except Exception as exc:
                if not blames_the_data(exc):
                    raise
                refusal = exc
                continue
            return candidate
        # Raised inside the transaction: the letter stays dead.
        assert refusal is not None
        raise UsageRejected(f"usage record still rejected: {describe(refusal)}") from refusal
