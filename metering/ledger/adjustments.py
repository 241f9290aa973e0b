"""Attribution that arrives after an event posted (e.g. gradient influence) re-splits it.

The event's split is recomputed with the same charge and policy version and the new weights;
the difference from what it has been paid so far (its posting plus earlier adjustments) is
posted as one `adjustment` transaction in the event's month, and recorded in
`usage_adjustments` (payees and amounts summing to zero). Re-applying the same weights changes
nothing. Adjustments happen before the close: an event of a closed month is refused (its
statements are final), so no payee's closed total can go negative.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncEngine

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
from metering.ledger.record_penalties import withhold_in_split
from metering.ledger.sources import AdapterDirectory, AdapterInfo
from metering.ledger.split_batch import group_parties
from metering.pg import driver
from metering.pricing import SplitPolicy, split_event

SELECT_POSTING = """
SELECT p.event_id, p.month, p.adapter, p.charge, p.payees, p.amounts, p.policy_id,
       la.owner_id AS payer_account
FROM usage_postings p JOIN ledger_accounts la ON la.id = p.payer_id
WHERE p.event_id = $1
"""
SELECT_ADJUSTMENTS = (
    "SELECT seq, payees, amounts FROM usage_adjustments WHERE event_id = $1 ORDER BY seq"
)
SELECT_POLICY = """
SELECT id, adapter, protocol_ppm, operator_ppm, owner_ppm, data_ppm, effective_from
FROM split_policies WHERE id = $1
"""
INSERT_ADJUSTMENT = """
INSERT INTO usage_adjustments (event_id, seq, txn_id, month, payees, amounts)
VALUES ($1, $2, $3, $4, $5, $6)
"""


class AdjustmentError(LookupError):
    pass


class EventNotPosted(AdjustmentError):
    """The event is not in the ledger yet: adjust it after it posts."""


class MonthClosed(AdjustmentError):
    """The event's month is closed: its statements are final."""


async def reattribute(
    engine: AsyncEngine, adapters: AdapterDirectory, event_id: str, weights: Mapping[int, int]
) -> int | None:
    """Re-split a posted event by `weights` (contributor account id -> weight > 0); returns
    the adjustment transaction, or None when nothing changes."""
    if not weights or any(w <= 0 for w in weights.values()):
        raise AdjustmentError("weights must be positive and not empty")
    async with driver(engine) as conn, conn.transaction():
        await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
        posting = await conn.fetchrow(SELECT_POSTING, event_id)
        if posting is None:
            raise EventNotPosted(f"event {event_id!r} is not posted")
        closed = await _closed(conn)
        if posting["month"] in closed:
            # Influence runs before the close; after it, the month's statements are final.
            raise MonthClosed(f"event {event_id!r} belongs to a closed month")
        adapter = posting["adapter"]
        info = await adapters.adapter(adapter) if adapter else None
        if info is None:
            raise AdjustmentError(f"event {event_id!r} has no adapter to attribute to")
        paid: dict[int, int] = {}
        for p, x in zip(posting["payees"], posting["amounts"], strict=True):
            paid[p] = paid.get(p, 0) + x
        earlier = await conn.fetch(SELECT_ADJUSTMENTS, event_id)
        for row in earlier:
            for p, x in zip(row["payees"], row["amounts"], strict=True):
                paid[p] = paid.get(p, 0) + x
        policy = SplitPolicy(**dict(await conn.fetchrow(SELECT_POLICY, posting["policy_id"])))
        system, _ = await system_payees(conn)
        contributors = await ensure_accounts_committed(conn, engine, "contributor", weights)
        owners = await ensure_accounts_committed(
            conn, engine, "adapter_owner", [info.owner_account_id] if info.owner_account_id else []
        )
        parties = group_parties(
            adapter, AdapterInfo(info.owner_account_id, {}), weights, contributors, owners,
            await penalties(conn),
        )  # fmt: skip
        parties = replace(parties, payer_account=posting["payer_account"])
        split = split_event(event_id, posting["charge"], policy, parties, system)
        await withhold_in_split(conn, event_id, split, contributors, system.withheld)
        wanted: dict[int, int] = {}
        for p, x in zip(split.payees, split.amounts, strict=True):
            wanted[p] = wanted.get(p, 0) + x
        delta = {p: wanted.get(p, 0) - paid.get(p, 0) for p in set(wanted) | set(paid)}
        delta = {p: x for p, x in sorted(delta.items()) if x}
        if not delta:
            return None
        month = posting["month"]
        txn = int(
            await conn.fetchval(INSERT_TXN, "adjustment", None, f"re-attribution of {event_id}")
        )
        await post_entries(conn, txn, [(p, month, x) for p, x in delta.items()])
        await conn.execute(
            INSERT_ADJUSTMENT,
            event_id,
            len(earlier) + 1,
            txn,
            month,
            list(delta),
            list(delta.values()),
        )
        held = delta.get(system.withheld, 0)
        if held:
            reason = (
                "; ".join(sorted({r for _, _, r in split.withheld})) or "released by re-attribution"
            )
            await conn.execute(INSERT_WITHHELD, txn, [month], [system.withheld], [held], [reason])
        return txn
