"""The dead-letter store: items a queue can never deliver, kept for an operator to replay or
discard, so that one bad item never stops the items behind it (DESIGN.md, invariant 8).

A queue that retries (the usage shipper, the influence enqueuer, the ledger posting worker)
puts an item here only when the store behind it rejected *that item* permanently
(`core.sqlstate.blames_the_data`), after splitting its batch until the item stood alone; then
it moves on. Invariants:

- One row per (queue, item key): `put` is idempotent, so a queue that crashed after putting and
  puts again on replay adds nothing. An item that fails again after an operator replayed it
  comes back to `dead` (the same row, `failures` + 1): it is never silently lost.
- The payload is the exact serialized item (msgpack of the usage record, the influence job,
  the usage event): `bytea` holds any bytes. The key and the error text are made storable
  (`item_key`, `core.sqlstate.describe`): no NUL, no lone surrogate, bounded length.
- States: `dead` (waiting for an operator) -> `replayed` | `discarded`, each once, with the
  time and a note. Only a `dead` row changes state.
- Every item put is counted in `royalty_dead_letters_total{queue}` once its write committed;
  `royalty_dead_letters_pending{queue}` (the rows in state `dead`, read from Postgres by
  `DeadLetterSampler`, which the ledger worker runs) is what the `RoyaltyDeadLetters` alert
  watches.

`PostgresDeadLetterStore` is the implementation (table `dead_letters`, migration 0011);
`put_on`/`resolve_on` do the same on a caller's connection, inside its transaction (the
posting worker removes an event from its queue and dead-letters it atomically).
`InMemoryDeadLetterStore` is the double for unit tests.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import asyncpg
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from core.sqlstate import describe, sqlstate_of, storable_text

log = logging.getLogger(__name__)

Queue = Literal["usage", "influence", "posting"]
State = Literal["dead", "replayed", "discarded"]
QUEUES: tuple[Queue, ...] = get_args(Queue)
STATES: tuple[State, ...] = get_args(State)
MAX_KEY_CHARS = 200
"""Longer keys are cut and suffixed with a digest of the whole (the unique index must hold)."""
MAX_NOTE_CHARS = 2000

DEAD_LETTERED = Counter(
    "royalty_dead_letters_total",
    "Items moved to the dead-letter store (the store behind their queue rejected them "
    "permanently), by queue: usage, influence, posting.",
    ["queue"],
)
DEAD_LETTERS_PENDING = Gauge(
    "royalty_dead_letters_pending",
    "Dead letters waiting for an operator (state 'dead'), by queue, as last read from "
    "Postgres by the ledger worker.",
    ["queue"],
    # Every sampler reads the same table: the max, not the sum, is the count.
    multiprocess_mode="livemax",
)


def dead_lettered(queue: str, items: int) -> None:
    """Count `items` newly dead-lettered on `queue` (once their write has committed)."""
    if items > 0:
        DEAD_LETTERED.labels(queue if queue in QUEUES else "other").inc(items)


_NEEDS_ESCAPE = re.compile(r"[\\\x00\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    return "\\\\" if ch == "\\" else f"\\u{ord(ch):04x}"


def item_key(raw: str) -> str:
    """The storable, unique form of an item's key (a request id): backslash, NUL and lone
    surrogates escaped (`\\\\`, `\\u0000`, `\\ud800`; injective), and a key longer than
    `MAX_KEY_CHARS` cut with a digest of the whole appended. Ordinary ids are unchanged."""
    key = _NEEDS_ESCAPE.sub(_escape, raw)
    if len(key) > MAX_KEY_CHARS:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        key = f"{key[: MAX_KEY_CHARS - 42]}...sha256:{digest}"
    return key


@dataclasses.dataclass(frozen=True, slots=True)
class NewDeadLetter:
    queue: Queue
    key: str
    """The item's own key (a request id), as is: the store escapes it (`item_key`)."""
    payload: bytes
    error: str
    sqlstate: str | None = None

    @classmethod
    def of(cls, queue: Queue, key: str, payload: bytes, exc: BaseException) -> NewDeadLetter:
        return cls(queue, key, payload, describe(exc), sqlstate_of(exc))


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    queue: Queue
    item_key: str
    payload: bytes
    error: str
    sqlstate: str | None
    created_at: dt.datetime
    state: State
    failures: int
    """How many times the item was dead-lettered (more than 1: it failed again after a replay)."""
    resolved_at: dt.datetime | None
    resolution: str | None


@runtime_checkable
class DeadLetterStore(Protocol):
    async def put(self, letters: Sequence[NewDeadLetter]) -> int:
        """Store letters (idempotent per queue and key); returns how many were new or came
        back to `dead`. Raises when nothing could be stored (retry later)."""
        ...

    async def list(
        self, *, queue: str | None = None, state: str | None = None, limit: int = 100,
        after_id: int = 0,
    ) -> Sequence[DeadLetter]:  # fmt: skip
        """Letters in id order, optionally of one queue and one state."""
        ...

    async def get(self, letter_id: int) -> DeadLetter | None: ...

    async def mark_replayed(
        self, letter_id: int, note: str = "", *, forget_payload: bool = False
    ) -> DeadLetter | None:
        """`dead` -> `replayed`; the letter as it was, or None if it is not `dead`.
        `forget_payload` empties the stored payload (text that must not outlive its use)."""
        ...

    async def mark_discarded(
        self, letter_id: int, reason: str, *, forget_payload: bool = False
    ) -> DeadLetter | None:
        """`dead` -> `discarded`, with the reason; as `mark_replayed`."""
        ...

    async def pending(self) -> dict[str, int]:
        """Letters in state `dead`, by queue (every queue named, 0 when none)."""
        ...


# --- Postgres ---------------------------------------------------------------------------------
_COLUMNS = (
    "id, queue, item_key, payload, error, sqlstate, created_at, state, failures, resolved_at, "
    "resolution"
)
# A new letter, or one that failed again after it was replayed: back to `dead`. A letter that
# is still `dead` (a replayed put) or was discarded on purpose is left as it is.
PUT = """
INSERT INTO dead_letters AS d (queue, item_key, payload, error, sqlstate)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[])
ON CONFLICT (queue, item_key) DO UPDATE SET
    state = 'dead', payload = EXCLUDED.payload, error = EXCLUDED.error,
    sqlstate = EXCLUDED.sqlstate, failures = d.failures + 1, resolved_at = NULL,
    resolution = 'failed again after: ' || coalesce(d.resolution, '')
WHERE d.state = 'replayed'
RETURNING queue
"""
LIST = f"""
SELECT {_COLUMNS} FROM dead_letters
WHERE id > $1 AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR state = $3)
ORDER BY id LIMIT $4
"""  # noqa: S608 (a fixed column list)
GET = f"SELECT {_COLUMNS} FROM dead_letters WHERE id = $1"  # noqa: S608
# The row is returned as it was before the change (its payload included).
RESOLVE = f"""
UPDATE dead_letters d SET state = $2, resolved_at = now(), resolution = $3,
    payload = CASE WHEN $4 THEN ''::bytea ELSE d.payload END
FROM (SELECT {_COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE) old
WHERE d.id = old.id AND d.state = 'dead' AND ($5::text IS NULL OR d.queue = $5)
RETURNING old.*
"""  # noqa: S608 (a fixed column list)
PENDING = "SELECT queue, count(*) FROM dead_letters WHERE state = 'dead' GROUP BY queue"


def _row(r: asyncpg.Record) -> DeadLetter:
    fields: dict[str, Any] = dict(r.items())
    fields["payload"] = bytes(fields["payload"])
    return DeadLetter(**fields)


def _note(text: str) -> str:
    return storable_text(text)[:MAX_NOTE_CHARS]


async def put_on(conn: asyncpg.Connection, letters: Sequence[NewDeadLetter]) -> int:
    """`put` on the caller's connection and transaction; counts nothing (the caller counts
    with `dead_lettered` once its transaction committed)."""
    return sum((await _put_rows(conn, letters)).values())


async def _put_rows(conn: asyncpg.Connection, letters: Sequence[NewDeadLetter]) -> dict[str, int]:
    """New (or revived) letters by queue."""
    unique: dict[tuple[str, str], NewDeadLetter] = {}
    for x in letters:  # one statement may not touch a row twice
        unique.setdefault((x.queue, item_key(x.key)), x)
    if not unique:
        return {}
    letters = list(unique.values())
    rows = await conn.fetch(
        PUT,
        [x.queue for x in letters],
        [item_key(x.key) for x in letters],
        [x.payload for x in letters],
        [_note(x.error) for x in letters],
        [x.sqlstate for x in letters],
    )
    new: dict[str, int] = {}
    for r in rows:
        new[r[0]] = new.get(r[0], 0) + 1
    return new


async def resolve_on(
    conn: asyncpg.Connection, letter_id: int, state: State, note: str, *,
    queue: str | None = None, forget_payload: bool = False,
) -> DeadLetter | None:  # fmt: skip
    """`dead` -> `state` on the caller's connection (and transaction: a rollback undoes it);
    the letter as it was before, or None when there is no `dead` letter `letter_id` (of
    `queue`, when given)."""
    if state == "dead":
        raise ValueError("a letter is resolved as replayed or discarded")
    row = await conn.fetchrow(RESOLVE, letter_id, state, _note(note), forget_payload, queue)
    return None if row is None else _row(row)


@contextlib.asynccontextmanager
async def _driver(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        try:
            yield raw.driver_connection
        except BaseException:
            await conn.invalidate()  # SQLAlchemy did not see this failure
            raise


class PostgresDeadLetterStore:
    def __init__(self, engine: AsyncEngine, *, timeout_s: float = 30.0) -> None:
        self._engine = engine
        self._timeout_s = timeout_s

    async def put(self, letters: Sequence[NewDeadLetter]) -> int:
        if not letters:
            return 0
        async with asyncio.timeout(self._timeout_s):
            async with _driver(self._engine) as conn, conn.transaction():
                new = await _put_rows(conn, letters)
        for queue, n in new.items():
            dead_lettered(queue, n)
        return sum(new.values())

    async def list(
        self, *, queue: str | None = None, state: str | None = None, limit: int = 100,
        after_id: int = 0,
    ) -> builtins.list[DeadLetter]:  # fmt: skip
        async with _driver(self._engine) as conn:
            rows = await conn.fetch(LIST, after_id, queue, state, limit)
        return [_row(r) for r in rows]

    async def get(self, letter_id: int) -> DeadLetter | None:
        async with _driver(self._engine) as conn:
            row = await conn.fetchrow(GET, letter_id)
        return None if row is None else _row(row)

    async def _resolve(
        self, letter_id: int, state: State, note: str, forget_payload: bool
    ) -> DeadLetter | None:
        async with _driver(self._engine) as conn, conn.transaction():
            return await resolve_on(conn, letter_id, state, note, forget_payload=forget_payload)

    async def mark_replayed(
        self, letter_id: int, note: str = "", *, forget_payload: bool = False
    ) -> DeadLetter | None:
        return await self._resolve(letter_id, "replayed", note, forget_payload)

    async def mark_discarded(
        self, letter_id: int, reason: str, *, forget_payload: bool = False
    ) -> DeadLetter | None:
        return await self._resolve(letter_id, "discarded", reason, forget_payload)

    async def pending(self) -> dict[str, int]:
        async with _driver(self._engine) as conn:
            rows = await conn.fetch(PENDING)
        counts: dict[str, int] = {q: 0 for q in QUEUES}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts


# --- in memory --------------------------------------------------------------------------------
class InMemoryDeadLetterStore:
    """The test double: same contract, rows in a dict. `fail_next` makes the next N calls of
    `put` raise `ConnectionError` (a transient outage) before storing anything."""

    def __init__(self) -> None:
        self.rows: dict[int, DeadLetter] = {}
        self.fail_next = 0
        self.put_calls = 0
        self._clock = lambda: dt.datetime.now(dt.UTC)

    def _by_key(self, queue: str, key: str) -> DeadLetter | None:
        return next((r for r in self.rows.values() if (r.queue, r.item_key) == (queue, key)), None)

    async def put(self, letters: Sequence[NewDeadLetter]) -> int:
        self.put_calls += 1
        await asyncio.sleep(0)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("in-memory dead-letter store: injected outage")
        new = 0
        for x in letters:
            key = item_key(x.key)
            found = self._by_key(x.queue, key)
            if found is not None and found.state != "replayed":
                continue
            fields: dict[str, Any] = {
                "payload": x.payload, "error": _note(x.error), "sqlstate": x.sqlstate,
                "state": "dead", "resolved_at": None,
            }  # fmt: skip
            if found is None:
                letter_id = max(self.rows, default=0) + 1
                self.rows[letter_id] = DeadLetter(
                    id=letter_id, queue=x.queue, item_key=key, created_at=self._clock(),
                    failures=1, resolution=None, **fields,
                )  # fmt: skip
            else:
                self.rows[found.id] = dataclasses.replace(
                    found, failures=found.failures + 1,
                    resolution=f"failed again after: {found.resolution or ''}", **fields,
                )  # fmt: skip
            dead_lettered(x.queue, 1)
            new += 1
        return new

    async def list(
        self, *, queue: str | None = None, state: str | None = None, limit: int = 100,
        after_id: int = 0,
    ) -> builtins.list[DeadLetter]:  # fmt: skip
        rows = [
            r
            for i, r in sorted(self.rows.items())
            if i > after_id and queue in (None, r.queue) and state in (None, r.state)
        ]
        return rows[:limit]

    async def get(self, letter_id: int) -> DeadLetter | None:
        return self.rows.get(letter_id)

    async def _resolve(
        self, letter_id: int, state: State, note: str, forget_payload: bool
    ) -> DeadLetter | None:
        old = self.rows.get(letter_id)
        if old is None or old.state != "dead":
            return None
        self.rows[letter_id] = dataclasses.replace(
            old, state=state, resolved_at=self._clock(), resolution=_note(note),
            payload=b"" if forget_payload else old.payload,
        )  # fmt: skip
        return old

    async def mark_replayed(
        self, letter_id: int, note: str = "", *, forget_payload: bool = False
    ) -> DeadLetter | None:
        return await self._resolve(letter_id, "replayed", note, forget_payload)

    async def mark_discarded(
        self, letter_id: int, reason: str, *, forget_payload: bool = False
    ) -> DeadLetter | None:
        return await self._resolve(letter_id, "discarded", reason, forget_payload)

    async def pending(self) -> dict[str, int]:
        counts: dict[str, int] = {q: 0 for q in QUEUES}
        for r in self.rows.values():
            if r.state == "dead":
                counts[r.queue] = counts.get(r.queue, 0) + 1
        return counts


# --- the gauge --------------------------------------------------------------------------------
class DeadLetterSampler:
    """Sets `royalty_dead_letters_pending{queue}` from the store every `interval_s`."""

    def __init__(self, store: DeadLetterStore, *, interval_s: float = 15.0) -> None:
        self.store = store
        self.interval_s = interval_s

    async def sample_once(self) -> dict[str, int]:
        counts = await self.store.pending()
        for queue, n in counts.items():
            DEAD_LETTERS_PENDING.labels(queue).set(n)
        return counts

    async def run(self) -> None:
        """Sample until cancelled; a failed read is logged and retried at the next tick."""
        while True:
            try:
                await self.sample_once()
            except Exception:
                log.exception("could not read the dead-letter counts")
            await asyncio.sleep(self.interval_s)
