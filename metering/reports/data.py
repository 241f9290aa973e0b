"""What a monthly report shows, read from the ledger: one operator view and one per payee.

Amounts stay integer micro-credits here; renderers format them (exactly) for people.
A month that is not closed yet gives a provisional report (no statement, no root).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from metering.money import month_label, next_month
from metering.payouts.close import PostgresPayouts, Statement
from metering.pg import driver

DAILY_REVENUE = """
SELECT event_day, sum(charge) AS amount, count(*) AS events
FROM usage_postings WHERE month = $1 GROUP BY event_day ORDER BY event_day
"""
REVENUE_BY_ADAPTER = """
SELECT adapter, sum(charge) AS amount, count(*) AS events
FROM usage_postings WHERE month = $1 GROUP BY adapter ORDER BY amount DESC, adapter LIMIT $2
"""
PER_PAYEE = """
SELECT coalesce(la.kind || ':' || acc.name, la.kind) AS payee, la.kind, sum(e.amount) AS amount
FROM ledger_entries e
JOIN ledger_accounts la ON la.id = e.account_id
LEFT JOIN accounts acc ON acc.id = la.owner_id
WHERE e.month = $1 AND la.kind IN ('contributor', 'adapter_owner', 'operator', 'treasury', 'withheld')
GROUP BY la.id, la.kind, acc.name ORDER BY amount DESC, payee
"""
FLAGGED = """
SELECT coalesce(la.kind || ':' || acc.name, la.kind) AS payee, w.reason, sum(w.amount) AS amount
FROM withheld_items w
JOIN ledger_accounts la ON la.id = w.beneficiary_id
LEFT JOIN accounts acc ON acc.id = la.owner_id
WHERE w.month = $1 AND ($2::bigint[] IS NULL OR w.beneficiary_id = ANY($2::bigint[]))
GROUP BY 1, 2 ORDER BY amount DESC LIMIT 200
"""
LEDGER_IDS_OF = "SELECT id, kind FROM ledger_accounts WHERE owner_id = $1 AND kind IN ('contributor', 'adapter_owner')"
PAYEE_DAILY = """
SELECT p.event_day, sum(s.amount) AS amount
FROM usage_postings p, unnest(p.payees, p.amounts) AS s(payee, amount)
WHERE p.month = $1 AND s.payee = ANY($2::bigint[])
GROUP BY p.event_day ORDER BY p.event_day
"""
PAYEE_BY_ADAPTER = """
SELECT p.adapter, sum(s.amount) AS amount, count(*) AS events
FROM usage_postings p, unnest(p.payees, p.amounts) AS s(payee, amount)
WHERE p.month = $1 AND s.payee = ANY($2::bigint[])
GROUP BY p.adapter ORDER BY amount DESC, p.adapter
"""
PAYEE_MONTH_TOTAL = """
SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE month = $1 AND account_id = ANY($2::bigint[])
"""
ACCOUNT_NAME = "SELECT name FROM accounts WHERE id = $1"


@dataclass
class OperatorReport:
    month: dt.date
    closed: bool
    root_hex: str | None
    charges: int
    payouts: int
    fees: int
    withheld: int
    events: int
    daily_revenue: list[tuple[dt.date, int]]
    top_adapters: list[tuple[str, int, int]]
    """(adapter or '(base model)', revenue, events)"""
    payees: list[tuple[str, str, int]]
    """(payee, kind, amount)"""
    flagged: list[tuple[str, str, int]]
    """(payee, reason, amount withheld)"""

    @property
    def label(self) -> str:
        return month_label(self.month)


@dataclass
class PayeeReport:
    month: dt.date
    account: str
    closed: bool
    root_hex: str | None
    total: int
    daily: list[tuple[dt.date, int]]
    by_adapter: list[tuple[str, int, int]]
    withheld: list[tuple[str, str, int]]
    statements: list[Statement] = field(default_factory=list)

    @property
    def label(self) -> str:
        return month_label(self.month)


def _days(month: dt.date, rows: list[tuple[dt.date, int]]) -> list[tuple[dt.date, int]]:
    """Every day of the month, zero where nothing happened (charts need a full axis)."""
    have = dict(rows)
    out = []
    d = month
    end = next_month(month)
    while d < end:
        out.append((d, int(have.get(d, 0))))
        d += dt.timedelta(days=1)
    return out


async def operator_report(engine: AsyncEngine, month: dt.date, top: int = 10) -> OperatorReport:
    closed = await PostgresPayouts(engine).month(month)
    async with driver(engine) as conn:
        daily = [(r["event_day"], int(r["amount"])) for r in await conn.fetch(DAILY_REVENUE, month)]
        adapters = [
            (r["adapter"] or "(base model)", int(r["amount"]), int(r["events"]))
            for r in await conn.fetch(REVENUE_BY_ADAPTER, month, top)
        ]
        payees = [
            (r["payee"], r["kind"], int(r["amount"])) for r in await conn.fetch(PER_PAYEE, month)
        ]
        flagged = [
            (r["payee"], r["reason"], int(r["amount"]))
            for r in await conn.fetch(FLAGGED, month, None)
        ]
        events = int(
            await conn.fetchval("SELECT count(*) FROM usage_postings WHERE month = $1", month)
        )
    kinds: dict[str, int] = {}
    for _, kind, amount in payees:
        kinds[kind] = kinds.get(kind, 0) + amount
    fees = kinds.get("treasury", 0)
    withheld = kinds.get("withheld", 0)
    payouts = sum(v for k, v in kinds.items() if k not in ("treasury", "withheld"))
    return OperatorReport(
        month=month, closed=closed is not None, root_hex=closed.root.hex() if closed else None,
        charges=sum(a for _, a in daily), payouts=payouts, fees=fees, withheld=withheld,
        events=events, daily_revenue=_days(month, daily), top_adapters=adapters,
        payees=[p for p in payees if p[1] != "withheld"], flagged=flagged,
    )  # fmt: skip


async def payee_report(engine: AsyncEngine, month: dt.date, account_id: int) -> PayeeReport:
    """A contributor's (and adapter owner's) own month: only their ledger accounts."""
    payouts = PostgresPayouts(engine)
    closed = await payouts.month(month)
    async with driver(engine) as conn:
        name = await conn.fetchval(ACCOUNT_NAME, account_id)
        if name is None:
            raise LookupError(f"no account {account_id}")
        ledger_ids = [r["id"] for r in await conn.fetch(LEDGER_IDS_OF, account_id)]
        daily = [
            (r["event_day"], int(r["amount"]))
            for r in await conn.fetch(PAYEE_DAILY, month, ledger_ids)
        ]
        by_adapter = [
            (r["adapter"] or "(base model)", int(r["amount"]), int(r["events"]))
            for r in await conn.fetch(PAYEE_BY_ADAPTER, month, ledger_ids)
        ]
        withheld = [
            (r["payee"], r["reason"], int(r["amount"]))
            for r in await conn.fetch(FLAGGED, month, ledger_ids)
        ]
        total = int(await conn.fetchval(PAYEE_MONTH_TOTAL, month, ledger_ids))
    own = {f"contributor:{name}", f"adapter_owner:{name}"}
    statements = [s for s in await payouts.statements(month) if s.payee in own] if closed else []
    return PayeeReport(
        month=month, account=str(name), closed=closed is not None,
        root_hex=closed.root.hex() if closed else None, total=total,
        daily=_days(month, daily), by_adapter=by_adapter, withheld=withheld, statements=statements,
    )  # fmt: skip
