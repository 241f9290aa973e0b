"""What the gateway calls for metering: earnings and statements of one account, credits,
prices, budgets. One object on the service container; each method answers for the account
it is given and nobody else (the route passes the key's own account)."""

from __future__ import annotations

import datetime as dt

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.budgets.store import PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.ledger.book import PostgresLedger
from metering.money import format_micros, month_label
from metering.payouts.close import PostgresPayouts, decode_proof
from metering.pg import driver

EARNINGS_BY_MONTH = """
SELECT e.month, la.kind, sum(e.amount) AS amount
FROM ledger_entries e JOIN ledger_accounts la ON la.id = e.account_id
WHERE la.owner_id = $1 AND la.kind IN ('contributor', 'adapter_owner')
GROUP BY e.month, la.kind ORDER BY e.month, la.kind
"""
OWN_WITHHELD = """
SELECT w.month, w.reason, sum(w.amount) AS amount
FROM withheld_items w JOIN ledger_accounts la ON la.id = w.beneficiary_id
WHERE la.owner_id = $1
GROUP BY w.month, w.reason ORDER BY w.month DESC, amount DESC LIMIT 100
"""
# Every amount withheld from the account's own earnings, with its reason: holds, penalties
# (at posting and reversals), self-dealing, re-attribution. A hold (or penalty) transaction
# that was reversed after review is released.
OWN_HOLDS = """
SELECT w.month, la.kind AS account_kind, w.reason,
       CASE WHEN t.kind = 'hold' THEN 'hold'
            WHEN t.kind = 'penalty' OR w.reason LIKE 'penalty%' THEN 'penalty'
            WHEN w.reason LIKE 'self-dealing%' THEN 'self-dealing'
            WHEN t.kind = 'adjustment' THEN 'adjustment'
            ELSE t.kind END AS kind,
       EXISTS (SELECT 1 FROM ledger_transactions r WHERE r.reverses = w.txn_id) AS released,
       sum(w.amount) AS amount, count(DISTINCT w.txn_id) AS transactions
FROM withheld_items w
JOIN ledger_accounts la ON la.id = w.beneficiary_id
JOIN ledger_transactions t ON t.id = w.txn_id
WHERE la.owner_id = $1 AND la.kind IN ('contributor', 'adapter_owner')
GROUP BY 1, 2, 3, 4, 5 ORDER BY w.month DESC, amount DESC, w.reason LIMIT $2
"""
CLOSED_MONTHS = "SELECT month, merkle_root FROM ledger_months"
OWN_STATEMENTS = """
SELECT s.payee, s.amount, s.leaf_index, s.proof, m.merkle_root, m.leaf_count
FROM statements s JOIN ledger_accounts la ON la.id = s.ledger_account
JOIN ledger_months m ON m.month = s.month
WHERE s.month = $1 AND la.owner_id = $2 ORDER BY s.payee
"""


class MonthEarnings(msgspec.Struct):
    month: str
    status: str
    """"closed" or "open" (open months are provisional)."""
    contributor: str
    adapter_owner: str
    total: str
    total_micros: int


class WithheldItem(msgspec.Struct):
    month: str
    reason: str
    amount: str


class Earnings(msgspec.Struct):
    object: str
    account_id: int
    months: list[MonthEarnings]
    withheld: list[WithheldItem]
    credit_available: str
    """The account's own prepaid credit (as a consumer)."""


class Hold(msgspec.Struct):
    month: str
    kind: str
    """"hold" (wash traffic, for review), "penalty", "self-dealing" or "adjustment"."""
    account_kind: str
    """Which of the caller's earnings: "contributor" or "adapter_owner"."""
    reason: str
    amount: str
    amount_micros: int
    released: bool
    """True when the hold (or penalty) was reversed after review: the amount was paid back
    in the open month."""


class Holds(msgspec.Struct):
    object: str
    account_id: int
    data: list[Hold]
    held_micros: int
    """What is withheld from the account now (not released), in micro-credits."""


class StatementLine(msgspec.Struct):
    payee: str
    amount: str
    amount_micros: int
    leaf_index: int
    proof: list[tuple[str, str]]


class MonthStatement(msgspec.Struct):
    object: str
    month: str
    merkle_root: str
    leaf_count: int
    statements: list[StatementLine]
    format: str = "royalty-payouts/1 (docs/payouts.md)"


class MeteringService:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.ledger = PostgresLedger(engine)
        self.catalog = PostgresCatalog(engine)
        self.budgets = PostgresBudgets(engine)
        self.payouts = PostgresPayouts(engine)

    async def earnings(self, account_id: int) -> Earnings:
        async with driver(self.engine) as conn:
            rows = await conn.fetch(EARNINGS_BY_MONTH, account_id)
            closed = {r["month"] for r in await conn.fetch(CLOSED_MONTHS)}
            held = await conn.fetch(OWN_WITHHELD, account_id)
        per: dict[dt.date, dict[str, int]] = {}
        for r in rows:
            per.setdefault(r["month"], {})[r["kind"]] = int(r["amount"])
        months = [
            MonthEarnings(
                month=month_label(m),
                status="closed" if m in closed else "open",
                contributor=format_micros(k.get("contributor", 0)),
                adapter_owner=format_micros(k.get("adapter_owner", 0)),
                total=format_micros(sum(k.values())),
                total_micros=sum(k.values()),
            )  # fmt: skip
            for m, k in sorted(per.items())
        ]
        withheld = [
            WithheldItem(month_label(r["month"]), r["reason"], format_micros(int(r["amount"])))
            for r in held
        ]
        credit = (await self.ledger.balance("consumer", account_id)).available
        return Earnings("earnings", account_id, months, withheld, format_micros(credit))

    async def holds(self, account_id: int, limit: int = 500) -> Holds:
        """Everything withheld from the account's own contributor and adapter-owner earnings,
        per month, kind and reason."""
        async with driver(self.engine) as conn:
            rows = await conn.fetch(OWN_HOLDS, account_id, limit)
        data = [
            Hold(
                month_label(r["month"]),
                r["kind"],
                r["account_kind"],
                r["reason"],
                format_micros(int(r["amount"])),
                int(r["amount"]),
                bool(r["released"]),
            )  # fmt: skip
            for r in rows
        ]
        held = sum(h.amount_micros for h in data if not h.released)
        return Holds("list", account_id, data, held)

    async def statement(self, account_id: int, month: dt.date) -> MonthStatement | None:
        """The account's own statements of a closed month; None if closed without one or not
        closed."""
        async with driver(self.engine) as conn:
            rows = await conn.fetch(OWN_STATEMENTS, month, account_id)
        if not rows:
            return None
        return MonthStatement(
            object="statement", month=month_label(month),
            merkle_root=bytes(rows[0]["merkle_root"]).hex(), leaf_count=rows[0]["leaf_count"],
            statements=[
                StatementLine(r["payee"], format_micros(r["amount"]), r["amount"], r["leaf_index"], decode_proof(r["proof"]))
                for r in rows
            ],
        )  # fmt: skip
