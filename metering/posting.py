"""The posting worker: usage events -> priced, split, double-entry postings, exactly once.

One batch is one Postgres transaction:
1. take the close lock shared (a month close waits for the batch, and vice versa);
2. DELETE up to N event ids from the `usage_unposted` queue (FOR UPDATE SKIP LOCKED, so
   workers share the queue) and read the events;
3. price and split every event in Python (integers only, `metering.pricing`);
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
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.catalog import load_price_book
from metering.ledger import (
    CLOSE_LOCK_KEY,
    INSERT_TXN,
    INSERT_WITHHELD,
    LOCK_SHARED,
    _closed,
    ensure_accounts,
    open_month_for,
    penalties,
    post_entries,
    system_payees,
)
from metering.money import month_start
from metering.pg import driver
from metering.pricing import EventParties, Payees, PriceBook, charge_micros, split_event
from metering.sources import AdapterDirectory, AdapterInfo, AttributionSource, NoAttribution

log = logging.getLogger(__name__)

TAKE_BATCH = """
WITH picked AS (
    SELECT event_id FROM usage_unposted ORDER BY event_id LIMIT $1 FOR UPDATE SKIP LOCKED
), taken AS (
    DELETE FROM usage_unposted u USING picked WHERE u.event_id = picked.event_id
    RETURNING u.event_id
)
SELECT e.request_id, e.account_id, e.base_model, e.adapter, e.status,
       e.prompt_tokens, e.completion_tokens, e.started_at
FROM taken JOIN usage_events e ON e.request_id = taken.event_id
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


@dataclass(frozen=True, slots=True)
class BatchResult:
    events: int
    charged: int
    """Sum of the batch's charges (micro-credits)."""
    txn_id: int | None


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
        self.fail_after_copy: Callable[[], None] | None = None
        """Test hook: called inside the transaction after the COPY (raise to crash there)."""

    async def post_batch(self) -> BatchResult:
        async with driver(self._engine) as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
            events = await conn.fetch(TAKE_BATCH, self.batch_size)
            if not events:
                return BatchResult(0, 0, None)
            return await self._post(conn, events)

    async def drain(self, progress: Callable[[int], None] | None = None) -> int:
        """Post until the queue is empty; returns how many events were posted."""
        total = 0
        while True:
            done = await self.post_batch()
            if done.events == 0:
                return total
            total += done.events
            if progress:
                progress(done.events)

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

    async def _post(
        self, conn: asyncpg.Connection, events: Sequence[asyncpg.Record]
    ) -> BatchResult:
        book = await load_price_book(conn)
        system, _ = await system_payees(conn)
        closed = await _closed(conn)
        penalised = await penalties(conn)
        payers = await ensure_accounts(conn, "consumer", {e["account_id"] for e in events})
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
        contributors = await ensure_accounts(conn, "contributor", people)
        owners = await ensure_accounts(
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
        await conn.copy_records_to_table("usage_postings", records=rows, columns=POSTING_COLUMNS)
        if self.fail_after_copy is not None:
            self.fail_after_copy()
        await post_entries(conn, txn, [(a, m, x) for (a, m), x in sums.items()])
        if withheld:
            await conn.execute(
                INSERT_WITHHELD, txn, [w[0] for w in withheld], [w[1] for w in withheld],
                [w[2] for w in withheld], [w[3] for w in withheld],
            )  # fmt: skip
        await conn.execute(RELEASE_RESERVATIONS, ids)
        return BatchResult(len(events), charged, txn)


def compute_postings(
    events: Sequence[Mapping[str, object]],
    txn: int,
    book: PriceBook,
    system: Payees,
    closed: set[dt.date],
    penalised: Mapping[tuple[int, str], str],
    payers: Mapping[int, int],
    infos: Mapping[str, AdapterInfo | None],
    weights: Mapping[str, Mapping[int, int]],
    contributors: Mapping[int, int],
    owners: Mapping[int, int],
) -> tuple[
    list[tuple[object, ...]],
    dict[tuple[int, dt.date], int],
    list[tuple[dt.date, int, int, str]],
    int,
]:
    """Pure: posting rows, per-(account, month) sums, withheld items, total charged."""
    rows: list[tuple[object, ...]] = []
    sums: dict[tuple[int, dt.date], int] = {}
    withheld: dict[tuple[dt.date, int, str], int] = {}
    month_cache: dict[dt.date, dt.date] = {}
    parties_cache: dict[tuple[str, int], EventParties] = {}
    charged = 0
    for e in events:
        event_id = str(e["request_id"])
        started: dt.datetime = e["started_at"]  # type: ignore[assignment]
        adapter = str(e["adapter"] or "")
        account = int(e["account_id"])  # type: ignore[call-overload]
        day = started.astimezone(dt.UTC).date()
        own_month = month_start(day)
        month = month_cache.get(own_month)
        if month is None:
            month = month_cache[own_month] = open_month_for(own_month, closed)
        price = book.price(str(e["base_model"]), adapter, started)
        charge = 0 if e["status"] == "error" else charge_micros(
            price, int(e["prompt_tokens"]), int(e["completion_tokens"])  # type: ignore[call-overload]
        )  # fmt: skip
        policy = book.policy(adapter, started)
        per_event = weights.get(event_id)
        if per_event is None:
            parties = parties_cache.get((adapter, account))
            if parties is None:
                parties = parties_cache[(adapter, account)] = _parties(
                    account, adapter, infos.get(adapter), None, contributors, owners, penalised
                )
        else:
            parties = _parties(
                account, adapter, infos.get(adapter), per_event, contributors, owners, penalised
            )
        split = split_event(event_id, charge, policy, parties, system)
        payer = payers[account]
        rows.append((
            event_id, txn, month, day, payer, adapter, price.id if price else None, policy.id,
            charge, split.payees, split.amounts,
        ))  # fmt: skip
        if charge:
            charged += charge
            key = (payer, month)
            sums[key] = sums.get(key, 0) - charge
            for p, x in zip(split.payees, split.amounts, strict=True):
                k = (p, month)
                sums[k] = sums.get(k, 0) + x
            for beneficiary, amount, reason in split.withheld:
                wk = (month, beneficiary, reason)
                withheld[wk] = withheld.get(wk, 0) + amount
    items = [(m, b, x, r) for (m, b, r), x in withheld.items()]
    return rows, sums, items, charged


def _parties(
    payer: int,
    adapter: str,
    info: AdapterInfo | None,
    per_event: Mapping[int, int] | None,
    contributors: Mapping[int, int],
    owners: Mapping[int, int],
    penalised: Mapping[tuple[int, str], str],
) -> EventParties:
    if not adapter or info is None:
        return EventParties(payer_account=payer, adapter=adapter, owner=None, contributors=())
    owner = None
    if info.owner_account_id is not None:
        owner = (info.owner_account_id, owners[info.owner_account_id])
    source = per_event if per_event is not None else info.baseline
    cs = tuple(sorted((a, contributors[a], int(w)) for a, w in source.items() if w > 0))
    pens = {}
    for a, _, _ in cs:
        reason = penalised.get((a, adapter)) or penalised.get((a, ""))
        if reason is not None:
            pens[a] = reason
    return EventParties(
        payer_account=payer, adapter=adapter, owner=owner, contributors=cs, penalties=pens
    )
