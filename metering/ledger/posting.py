"""The posting worker: usage events -> priced, split, double-entry postings, exactly once.

One batch is one Postgres transaction:
1. take the close lock shared (a month close waits for the batch, and vice versa);
2. DELETE up to N event ids from the `usage_unposted` queue (FOR UPDATE SKIP LOCKED, so
   workers share the queue) and read the events;
3. price and split every event (integers only; numpy per group, `metering.ledger.split_batch`);
4. COPY one `usage_postings` row per event (primary key = event id: the idempotency key,
   holding the event's payees and amounts, which sum to its charge);
5. append one ledger transaction whose entries are the batch's splits summed per
   (account, month), move the cached balances, release the events' budget reservations.
A crash or cancellation anywhere rolls all of it back, queue rows included; the next attempt
does the same work again. A replayed usage event never reaches the queue (the shipper's
INSERT ... ON CONFLICT DO NOTHING adds no row, so the enqueue trigger sees none).

Months: an event posts to the month of its `started_at` (UTC), or, once that month is
closed, to the first open month after it.

Poison events: when a batch fails because of an event's data (`core.sqlstate.blames_the_data`:
e.g. a charge that overflows bigint, 22003), retrying the batch would fail forever and stop
the queue. The worker then posts the batch's events in halves, recursively (each half its
own transaction, exactly like a batch), until the failing event stands alone, and moves it
to the dead-letter store (queue `posting`, the event's usage record as msgpack): the DELETE
from `usage_unposted` and the dead letter are one transaction, so every event stays posted,
queued or dead-lettered, exactly one of them. Its budget reservation stays held until an
operator replays it (`requeue_dead_letter`: back on the queue) or discards it
(`discard_dead_letter`: never charged, the reservation released). Transient errors, and
errors that are not the data's fault, roll back and are retried.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from core import deadletters
from core.sqlstate import blames_the_data, describe, is_transient
from metering import metrics as metering_metrics
from metering.catalog import load_price_book
from metering.ledger.book import (
    CLOSE_LOCK_KEY,
    INSERT_TXN,
    INSERT_WITHHELD,
    LOCK_SHARED,
    _closed,
    ensure_accounts_committed,
    penalties,
    post_entries,
    system_payees,
)
from metering.ledger.record_penalties import withhold_in_batch
from metering.ledger.sources import AdapterDirectory, AttributionSource, NoAttribution
from metering.ledger.split_batch import compute_postings
from metering.pg import driver
from metering.usage.record import USAGE_COLUMNS, UsageRecord
from metering.usage.store import dead_letter_payload, decode_dead_letter

log = logging.getLogger(__name__)

# From a cursor onwards (a sweep that wraps around): scanning the queue's index from its
# start every batch would step over every entry deleted since the last vacuum. The ids go
# through arrays (`= ANY(ARRAY(...))`), so both the DELETE and the read of the events are
# primary-key lookups: as joins, the planner (with freshly shipped rows not yet in its
# statistics) hashed the whole queue and the whole usage_events table for every batch, a
# cost that grew with the table (360 ms instead of 90 ms a batch at 400k events).
TAKE_BATCH = """
WITH taken AS (
    DELETE FROM usage_unposted WHERE event_id = ANY(ARRAY(
        SELECT event_id FROM usage_unposted WHERE event_id >= $2
        ORDER BY event_id LIMIT $1 FOR UPDATE SKIP LOCKED
    ))
    RETURNING event_id
)
SELECT e.request_id, e.account_id, e.base_model, e.adapter, e.status,
       e.prompt_tokens, e.completion_tokens, e.started_at
FROM usage_events e WHERE e.request_id = ANY(ARRAY(SELECT event_id FROM taken))
"""
# The same, for given event ids (isolating a poison event): those still queued and not taken.
TAKE_IDS = """
WITH taken AS (
    DELETE FROM usage_unposted WHERE event_id = ANY(ARRAY(
        SELECT event_id FROM usage_unposted WHERE event_id = ANY($1::text[])
        ORDER BY event_id FOR UPDATE SKIP LOCKED
    ))
    RETURNING event_id
)
SELECT e.request_id, e.account_id, e.base_model, e.adapter, e.status,
       e.prompt_tokens, e.completion_tokens, e.started_at
FROM usage_events e WHERE e.request_id = ANY(ARRAY(SELECT event_id FROM taken))
"""
TAKE_POISON = f"""
WITH taken AS (
    DELETE FROM usage_unposted WHERE event_id = ANY(ARRAY(
        SELECT event_id FROM usage_unposted WHERE event_id = $1 FOR UPDATE SKIP LOCKED
    ))
    RETURNING event_id
)
SELECT {", ".join(USAGE_COLUMNS)}
FROM usage_events e WHERE e.request_id = ANY(ARRAY(SELECT event_id FROM taken))
"""  # noqa: S608 (a fixed column list)
# Back on the queue, unless it was posted meanwhile (it never is: dead-lettering removed it).
REQUEUE_EVENT = """
INSERT INTO usage_unposted (event_id)
SELECT request_id FROM usage_events WHERE request_id = $1
  AND NOT EXISTS (SELECT 1 FROM usage_postings WHERE event_id = $1)
ON CONFLICT (event_id) DO NOTHING
"""
POSTING_COLUMNS = (
    "event_id", "txn_id", "month", "event_day", "payer_id", "adapter", "price_id", "policy_id",
    "charge", "payees", "amounts",
)  # fmt: skip
RELEASE_RESERVATIONS = """
WITH gone AS (
    DELETE FROM budget_reservations WHERE request_id = ANY($1::text[])
    RETURNING account_id, amount
), per_account AS (
    SELECT account_id, sum(amount) AS amount FROM gone GROUP BY account_id
)
UPDATE ledger_accounts a SET held = a.held - p.amount
FROM per_account p WHERE a.id = p.account_id
"""
QUEUE_DEPTH = "SELECT count(*) FROM usage_unposted"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(value: str) -> str:
    return value.translate(_COPY_ESCAPES)


def postings_copy_text(rows: Sequence[Sequence[object]]) -> bytes:
    """Posting rows in COPY text format. asyncpg's binary COPY spends ~30 µs a row checking
    every array element against collection ABCs; this is a few. str(list) is C code and
    Postgres' array input accepts its ', ' separators. Only the event id and the
    adapter name are free text, and both are escaped; the rest are integers and dates."""
    out = []
    null = "\\N"
    dates: dict[object, str] = {}
    # Event ids are escaped one by one only when one of them needs it (almost never: they
    # are request ids); adapter names once per name.
    plain = not any(ch in "".join(str(r[0]) for r in rows) for ch in "\\\t\n\r")
    names: dict[object, str] = {}
    for eid, txn, month, day, payer, adapter, price, policy, charge, payees, amounts in rows:
        m = dates.get(month) or dates.setdefault(month, str(month))
        d = dates.get(day) or dates.setdefault(day, str(day))
        a = names.get(adapter)
        if a is None:
            a = names[adapter] = _text(adapter)  # type: ignore[arg-type]
        out.append(
            f"{eid if plain else _text(eid)}\t{txn}\t{m}\t{d}\t{payer}\t{a}\t"  # type: ignore[arg-type]
            f"{null if price is None else price}\t{policy}\t{charge}\t"
            f"{{{str(payees)[1:-1]}}}\t{{{str(amounts)[1:-1]}}}\n"
        )
    return "".join(out).encode()


@dataclass(frozen=True, slots=True)
class BatchResult:
    events: int
    charged: int
    """Sum of the batch's charges (micro-credits)."""
    txn_id: int | None
    minted: dict[str, int] = field(default_factory=dict)
    """Micro-credits the batch credited, by payee kind (for the credits-minted metric)."""
    dead_lettered: int = 0
    """Events taken off the queue into the dead-letter store (their data cannot post)."""

    def __add__(self, other: BatchResult) -> BatchResult:
        minted = dict(self.minted)
        for kind, micros in other.minted.items():
            minted[kind] = minted.get(kind, 0) + micros
        return BatchResult(
            self.events + other.events, self.charged + other.charged,
            other.txn_id if other.txn_id is not None else self.txn_id, minted,
            self.dead_lettered + other.dead_lettered,
        )  # fmt: skip


class PostingWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        adapters: AdapterDirectory,
        attribution: AttributionSource | None = None,
        *,
        batch_size: int = 20_000,
    ) -> None:
        self._engine = engine
        self._adapters = adapters
        self._attribution = attribution or NoAttribution()
        self.batch_size = batch_size
        self._cursor = ""
        self.take_sql = TAKE_BATCH
        """The statement that takes a batch (benchmarks swap in earlier versions)."""
        self.fail_after_copy: Callable[[], None] | None = None
        """Test hook: called inside the transaction after the COPY (raise to crash there)."""

    async def post_batch(self) -> BatchResult:
        """Post one batch; a batch that fails because of an event's data is posted around
        that event, which goes to the dead-letter store (module docstring)."""
        taken: list[str] = []
        try:
            done = await self._post_batch(taken)
        except Exception as exc:
            if not taken or not blames_the_data(exc):
                raise
            log.warning(
                "a batch of %d usage events failed on an event's data (%s); isolating it",
                len(taken), describe(exc),
            )  # fmt: skip
            done = await self._isolate(taken, exc)
        for kind, micros in done.minted.items():  # counted once the batch committed
            metering_metrics.credits_minted(kind, micros)
        return done

    async def _post_batch(self, taken: list[str]) -> BatchResult:
        async with driver(self._engine) as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
            cursor = self._cursor
            events = await conn.fetch(self.take_sql, self.batch_size, cursor)
            if not events and cursor:
                events = await conn.fetch(self.take_sql, self.batch_size, "")  # wrap around
            if not events:
                self._cursor = ""
                return BatchResult(0, 0, None)
            # Only a hint: a batch that rolls back leaves its events behind the cursor, and
            # the next wrap-around takes them.
            self._cursor = max(e["request_id"] for e in events)
            taken.extend(e["request_id"] for e in events)
            return await self._post(conn, events)

    async def _post_ids(self, ids: Sequence[str]) -> BatchResult:
        """Post those of `ids` still queued (and not taken by another worker): one batch."""
        async with driver(self._engine) as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
            events = await conn.fetch(TAKE_IDS, list(ids))
            if not events:
                return BatchResult(0, 0, None)
            return await self._post(conn, events)

    async def _isolate(self, ids: Sequence[str], error: BaseException) -> BatchResult:
        """Post `ids` (whose batch failed with `error`) in halves, recursively, and
        dead-letter each event that fails alone. Each half is a transaction of its own: an
        event is posted or dead-lettered once, and one still queued after a crash or a
        transient error is simply taken again later."""
        done = BatchResult(0, 0, None)
        todo: list[tuple[list[str], BaseException]] = [(sorted(ids), error)]
        while todo:
            chunk, failure = todo.pop(0)
            if len(chunk) == 1:
                done = done + await self._dead_letter(chunk[0], failure)
                continue
            half = len(chunk) // 2
            for part in (chunk[:half], chunk[half:]):
                try:
                    done = done + await self._post_ids(part)
                except Exception as exc:
                    if not blames_the_data(exc):
                        raise
                    todo.append((part, exc))
        return done

    async def _dead_letter(self, event_id: str, error: BaseException) -> BatchResult:
        """Take `event_id` off the queue into the dead-letter store, in one transaction
        (nothing if another worker holds it or it is no longer queued)."""
        async with driver(self._engine) as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
            row = await conn.fetchrow(TAKE_POISON, event_id)
            if row is None:
                return BatchResult(0, 0, None)
            payload = dead_letter_payload(UsageRecord(**dict(row)))
            letter = deadletters.NewDeadLetter.of("posting", event_id, payload, error)
            await deadletters.put_on(conn, [letter])
        deadletters.dead_lettered("posting", 1)
        log.error("usage event %r dead-lettered: it cannot post: %s", event_id, describe(error))
        return BatchResult(0, 0, None, dead_lettered=1)

    async def drain(
        self, progress: Callable[[int], None] | None = None, *, concurrency: int = 2
    ) -> int:
        """Post until the queue is empty; returns how many events were posted. `concurrency`
        batches in flight (SKIP LOCKED gives each its own events): one computes while
        another waits on Postgres."""

        async def loop() -> int:
            total = 0
            while True:
                done = await self.post_batch()
                if done.events == 0 and done.dead_lettered == 0:
                    return total
                total += done.events
                if progress:
                    progress(done.events)

        # A TaskGroup: if one batch fails, the others are cancelled (and roll back) too.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(loop()) for _ in range(max(concurrency, 1))]
        return sum(t.result() for t in tasks)

    async def queue_depth(self) -> int:
        async with driver(self._engine) as conn:
            return int(await conn.fetchval(QUEUE_DEPTH))

    async def run(self, idle_s: float = 1.0, *, max_backoff_s: float = 30.0) -> None:
        """Post forever (a background task of `royalty up`); cancel to stop. A failed batch
        rolled back whole and is retried: at once-per-`idle_s` when transient, with a backoff
        growing to `max_backoff_s` otherwise (an error no event is to blame for, e.g. a
        schema out of date, fails every batch alike: it is logged, not dead-lettered)."""
        backoff = idle_s
        while True:
            try:
                done = await self.post_batch()
            except Exception as exc:
                if is_transient(exc):
                    log.warning("posting batch failed (transient: %r); retrying", exc)
                    await asyncio.sleep(idle_s)
                else:
                    log.exception("posting batch failed; retrying in %.1f s", backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(max(backoff * 2, idle_s), max_backoff_s)
                continue
            backoff = idle_s
            if done.events + done.dead_lettered < self.batch_size:
                await asyncio.sleep(idle_s)

    async def _accounts(
        self, conn: asyncpg.Connection, kind: str, owners: Iterable[int]
    ) -> dict[int, int]:
        return await ensure_accounts_committed(conn, self._engine, kind, owners)

    async def _post(
        self, conn: asyncpg.Connection, events: Sequence[asyncpg.Record]
    ) -> BatchResult:
        book = await load_price_book(conn)
        system, _ = await system_payees(conn)
        closed = await _closed(conn)
        penalised = await penalties(conn)
        payers = await self._accounts(conn, "consumer", {e["account_id"] for e in events})
        names = {e["adapter"] for e in events if e["adapter"]}
        infos = {n: await self._adapters.adapter(n) for n in names}
        ids = [e["request_id"] for e in events]
        weights = await self._attribution.weights(
            [i for i, e in zip(ids, events, strict=True) if e["adapter"]]
        )
        people: set[int] = set()
        for info in infos.values():
            if info is not None:
                people.update(info.baseline)
        for w in weights.values():
            people.update(w)
        contributors = await self._accounts(conn, "contributor", people)
        owners = await self._accounts(
            conn,
            "adapter_owner",
            {i.owner_account_id for i in infos.values() if i and i.owner_account_id is not None},
        )
        txn = int(await conn.fetchval(INSERT_TXN, "usage", None, f"{len(events)} usage events"))
        rows, sums, withheld, charged = compute_postings(
            events,
            txn,
            book,
            system,
            closed,
            penalised,
            payers,
            infos,
            weights,
            contributors,
            owners,
        )
        withheld += await withhold_in_batch(conn, rows, sums, contributors, system.withheld)
        await conn.copy_to_table(
            "usage_postings", source=io.BytesIO(postings_copy_text(rows)), columns=POSTING_COLUMNS
        )
        if self.fail_after_copy is not None:
            self.fail_after_copy()
        # Every payer is locked with the balances (in id order): releasing reservations
        # below then touches no row out of order, so concurrent posters cannot deadlock.
        await post_entries(
            conn, txn, [(a, m, x) for (a, m), x in sums.items()], lock_also=payers.values()
        )
        if withheld:
            await conn.execute(
                INSERT_WITHHELD, txn, [w[0] for w in withheld], [w[1] for w in withheld],
                [w[2] for w in withheld], [w[3] for w in withheld],
            )  # fmt: skip
        await conn.execute(RELEASE_RESERVATIONS, ids)
        kinds = {system.treasury: "treasury", system.operator: "operator"}
        kinds[system.withheld] = "withheld"
        kinds.update({ledger: "contributor" for ledger in contributors.values()})
        kinds.update({ledger: "adapter_owner" for ledger in owners.values()})
        minted: dict[str, int] = {}
        for (account, _), amount in sums.items():
            kind = kinds.get(account)
            if kind is not None and amount > 0:
                minted[kind] = minted.get(kind, 0) + amount
        return BatchResult(len(events), charged, txn, minted)


# --- dead letters (operators: `royalty deadletters replay|discard`) ---------------------------
async def requeue_dead_letter(engine: AsyncEngine, letter_id: int, note: str) -> str:
    """Put dead posting letter `letter_id`'s event back on the queue and mark it replayed, in
    one transaction; returns the event id. Raises `LookupError` when there is no such dead
    posting letter, `ValueError` when its event is gone or already posted (nothing changes)."""
    async with driver(engine) as conn, conn.transaction():
        letter = await deadletters.resolve_on(conn, letter_id, "replayed", note, queue="posting")
        if letter is None:
            raise LookupError(f"no dead posting letter {letter_id}")
        event_id = decode_dead_letter(letter.payload).request_id
        if await conn.execute(REQUEUE_EVENT, event_id) != "INSERT 0 1":
            raise ValueError(f"usage event {event_id!r} is not stored or already posted")
    return event_id


async def discard_dead_letter(engine: AsyncEngine, letter_id: int, reason: str) -> str:
    """Mark dead posting letter `letter_id` discarded: its event is never charged, so its
    budget reservation is released, in the same transaction. Returns the event id."""
    async with driver(engine) as conn, conn.transaction():
        letter = await deadletters.resolve_on(conn, letter_id, "discarded", reason, queue="posting")
        if letter is None:
            raise LookupError(f"no dead posting letter {letter_id}")
        event_id = decode_dead_letter(letter.payload).request_id
        await conn.execute(RELEASE_RESERVATIONS, [event_id])
    return event_id
