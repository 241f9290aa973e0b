"""Wash-traffic holds, applied when a month closes: earnings that look bought are withheld for
review instead of paid, each with a reason the payee can read.

Heuristic (the one implemented): one payer dominating an adapter's revenue. If, in the month,
a single payer made at least `dominant_ppm` of an adapter's revenue over at least
`min_events` events, the adapter owner's and contributors' earnings from that payer's events
move to `withheld` ("hold for review: ..."), in one `hold` transaction of the month being
closed. Releasing a hold after review is a reversing transaction (`PostgresLedger.reverse`),
which lands in the open month.

Repeated prompts and bursts need per-request features that usage events do not carry yet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from metering.ledger import INSERT_TXN, INSERT_WITHHELD, post_entries, system_payees

DOMINANT_PAYERS = """
WITH per AS (
    SELECT adapter, payer_id, sum(charge) AS revenue, count(*) AS events
    FROM usage_postings WHERE month = $1 AND adapter <> '' GROUP BY adapter, payer_id
), total AS (
    SELECT adapter, sum(revenue) AS revenue, sum(events) AS events FROM per GROUP BY adapter
)
SELECT per.adapter, per.payer_id, per.revenue, total.revenue AS adapter_revenue
FROM per JOIN total USING (adapter)
WHERE total.events >= $2 AND total.revenue > 0 AND per.revenue * 1000000 >= $3 * total.revenue
ORDER BY per.adapter
"""
EARNED_FROM_PAYER = """
SELECT s.payee, sum(s.amount) AS amount
FROM usage_postings p, unnest(p.payees, p.amounts) AS s(payee, amount)
WHERE p.month = $1 AND p.adapter = $2 AND p.payer_id = $3
  AND s.payee IN (SELECT id FROM ledger_accounts WHERE kind IN ('contributor', 'adapter_owner'))
GROUP BY s.payee ORDER BY s.payee
"""
MONTH_BALANCE = (
    "SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE month = $1 AND account_id = $2"
)


@dataclass(frozen=True, slots=True)
class WashPolicy:
    dominant_ppm: int = 800_000
    """A payer with at least this share of an adapter's monthly revenue (parts per million)."""
    min_events: int = 20
    """Adapters with fewer events in the month are not judged."""


async def apply_holds(conn: asyncpg.Connection, month: dt.date, policy: WashPolicy) -> int:
    """Inside the close's transaction: withhold dominated earnings; returns the amount held."""
    found = await conn.fetch(DOMINANT_PAYERS, month, policy.min_events, policy.dominant_ppm)
    if not found:
        return 0
    payees, _ = await system_payees(conn)
    entries: list[tuple[int, dt.date, int]] = []
    items: list[tuple[dt.date, int, int, str]] = []
    left: dict[int, int] = {}
    for r in found:
        share = int(r["revenue"]) * 100 // int(r["adapter_revenue"])
        reason = (
            f"hold for review: one payer made {share}% of adapter {r['adapter']!r}'s revenue "
            f"this month (wash-traffic check)"
        )
        for e in await conn.fetch(EARNED_FROM_PAYER, month, r["adapter"], r["payer_id"]):
            payee = e["payee"]
            if payee not in left:
                left[payee] = int(await conn.fetchval(MONTH_BALANCE, month, payee))
            amount = min(int(e["amount"]), left[payee])
            if amount > 0:
                left[payee] -= amount
                entries += [(payee, month, -amount), (payees.withheld, month, amount)]
                items.append((month, payee, amount, reason))
    if not entries:
        return 0
    txn = int(await conn.fetchval(INSERT_TXN, "hold", None, "wash-traffic holds at close"))
    await post_entries(conn, txn, entries)
    await conn.execute(
        INSERT_WITHHELD, txn, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
        [i[3] for i in items],
    )  # fmt: skip
    return sum(i[2] for i in items)
