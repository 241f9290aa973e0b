"""The posting worker: usage events -> priced, split, double-entry postings, exactly once.

One batch is one Postgres transaction:
1. take the close lock shared (a month close waits for the batch, and vice versa);
2. DELETE up to N event ids from the `usage_unposted` queue (FOR UPDATE SKIP LOCKED, so
   workers share the queue) and read the events;
3. price and split every event (integers only; numpy per group, `metering.split_batch`);
4. COPY one `usage_postings` row per event (primary key = event id: the idempotency key,
   holding the event's payees and amounts, which sum to its charge);
5. append one ledger transaction whose entries are the batch's splits summed per
   (account, month), move the cached balances, release the events' budget reservations.
A crash or cancellation anywhere rolls all of it back, queue rows included; the next attempt
does the same work again. A replayed usage event never reaches the queue (the shipper's
INSERT ... ON CONFLICT DO NOTHING adds no row, so the enqueue trigger sees none).

Months: an event posts to the month of its `started_at` (UTC), or, once that month is
closed, to the first open month after it.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from metering import metrics as metering_metrics
from metering.catalog import load_price_book
from metering.ledger import (
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
from metering.pg import driver
from metering.record_penalties import withhold_in_batch
from metering.sources import AdapterDirectory, AttributionSource, NoAttribution
from metering.split_batch import compute_postings

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
        done = await self._post_batch()
        for kind, micros in done.minted.items():  # counted once the batch committed
            metering_metrics.credits_minted(kind, micros)
        return done

    async def _post_batch(self) -> BatchResult:
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
            return await self._post(conn, events)

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
                if done.events == 0:
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

    async def run(self, idle_s: float = 1.0) -> None:
        """Post forever (a background task of `royalty up`); cancel to stop."""
        while True:
            try:
                done = await self.post_batch()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.exception("posting batch failed; retrying")
                await asyncio.sleep(idle_s)
                continue
            if done.events < self.batch_size:
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
