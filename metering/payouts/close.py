"""Monthly close: freeze a month, one statement per payee, Merkle root and proofs.

Closing takes the close lock exclusively (no batch is half-posted, nothing posts meanwhile),
checks conservation (charges = payouts + fees + withheld, to the unit), and writes the month
row, then the statements; both tables are append-only, so a closed month never changes.
Events and adjustments of a closed month post to the next open month. Closing a closed month
is a no-op. The proof format is in `metering/payouts/merkle.py` and docs/payouts.md.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from metering import metrics
from metering.ledger.book import CLOSE_LOCK_KEY, LOCK_EXCLUSIVE
from metering.money import month_label
from metering.payouts import merkle as payout_merkle
from metering.payouts.holds import WashPolicy, apply_holds, open_holds_total
from metering.pg import driver

PAYEE_KINDS = ("contributor", "adapter_owner", "operator", "treasury")

SELECT_MONTH = """
SELECT month, closed_at, merkle_root, leaf_count, charges, payouts, fees, withheld, event_count
FROM ledger_months WHERE month = $1
"""
# One statement per payee: the month's entries per earning account. System payees are named
# by kind; people by kind and account name ("contributor:alice").
MONTH_PAYEES = """
SELECT la.id, la.kind, coalesce(la.kind || ':' || acc.name, la.kind) AS payee,
       sum(e.amount) AS amount
FROM ledger_entries e
JOIN ledger_accounts la ON la.id = e.account_id
LEFT JOIN accounts acc ON acc.id = la.owner_id
WHERE e.month = $1 AND la.kind = ANY($2::text[])
GROUP BY la.id, la.kind, acc.name
"""
MONTH_WITHHELD = """
SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e
JOIN ledger_accounts la ON la.id = e.account_id
WHERE e.month = $1 AND la.kind = 'withheld'
"""
MONTH_CHARGES = "SELECT coalesce(sum(charge), 0), count(*) FROM usage_postings WHERE month = $1"
INSERT_MONTH = """
INSERT INTO ledger_months (month, merkle_root, leaf_count, charges, payouts, fees, withheld, event_count)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
INSERT_STATEMENTS = """
INSERT INTO statements (month, payee, ledger_account, amount, leaf_index, proof)
SELECT $1, p, a, x, i, pr::jsonb
FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::int[], $6::text[]) AS s(p, a, x, i, pr)
"""
SELECT_STATEMENTS = """
SELECT payee, amount, leaf_index, proof FROM statements WHERE month = $1 ORDER BY leaf_index
"""


class CloseError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class MonthClose:
    month: dt.date
    root: bytes
    statements: int
    charges: int
    payouts: int
    fees: int
    withheld: int
    events: int
    already_closed: bool = False


@dataclass(frozen=True, slots=True)
class Statement:
    payee: str
    amount: int
    leaf_index: int
    proof: list[tuple[str, str]]


def _close_of(row: asyncpg.Record, already: bool) -> MonthClose:
    return MonthClose(
        row["month"], bytes(row["merkle_root"]), row["leaf_count"], row["charges"], row["payouts"],
        row["fees"], row["withheld"], row["event_count"], already,
    )  # fmt: skip


def decode_proof(stored: object) -> list[tuple[str, str]]:
    # SQLAlchemy's asyncpg dialect installs a jsonb codec; a bare connection returns text.
    steps = json.loads(stored) if isinstance(stored, str | bytes) else stored
    return [(str(side), str(h)) for side, h in steps]  # type: ignore[union-attr]


class PostgresPayouts:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def close(self, month: dt.date, wash: WashPolicy | None = WashPolicy()) -> MonthClose:
        """Freeze `month`; `wash=None` skips the wash-traffic holds."""
        async with driver(self._engine) as conn:
            held, closed = await self._close(conn, month, wash)
            if held:  # counted once the close committed
                metrics.hold_placed(await open_holds_total(conn))
        return closed

    async def _close(
        self, conn: asyncpg.Connection, month: dt.date, wash: WashPolicy | None
    ) -> tuple[int, MonthClose]:
        """(amount put on hold, the close), in one transaction."""
        held = 0
        async with conn.transaction():
            await conn.execute(LOCK_EXCLUSIVE, CLOSE_LOCK_KEY)
            existing = await conn.fetchrow(SELECT_MONTH, month)
            if existing is not None:
                return 0, _close_of(existing, True)
            if wash is not None:
                held = await apply_holds(conn, month, wash)
            rows = await conn.fetch(MONTH_PAYEES, month, list(PAYEE_KINDS))
            charges, events = await conn.fetchrow(MONTH_CHARGES, month)
            withheld = int(await conn.fetchval(MONTH_WITHHELD, month))
            fees = sum(int(r["amount"]) for r in rows if r["kind"] == "treasury")
            payouts = sum(int(r["amount"]) for r in rows if r["kind"] != "treasury")
            if int(charges) != payouts + fees + withheld:
                raise CloseError(
                    f"{month_label(month)} does not balance: charges {charges} != payouts "
                    f"{payouts} + fees {fees} + withheld {withheld}"
                )
            negative = [r["payee"] for r in rows if r["amount"] < 0]
            if negative:
                raise CloseError(f"negative statements in {month_label(month)}: {negative[:5]}")
            stated = sorted((r for r in rows if r["amount"] > 0), key=lambda r: r["payee"].encode())
            period = month_label(month)
            leaves = [payout_merkle.leaf_hash(period, r["payee"], int(r["amount"])) for r in stated]
            root, proofs = payout_merkle.build(leaves)
            await conn.execute(
                INSERT_MONTH,
                month,
                root,
                len(stated),
                int(charges),
                payouts,
                fees,
                withheld,
                int(events),
            )
            await conn.execute(
                INSERT_STATEMENTS, month, [r["payee"] for r in stated], [r["id"] for r in stated],
                [int(r["amount"]) for r in stated], list(range(len(stated))),
                [json.dumps(p) for p in proofs],
            )  # fmt: skip
            return held, MonthClose(
                month, root, len(stated), int(charges), payouts, fees, withheld, int(events)
            )

    async def month(self, month: dt.date) -> MonthClose | None:
        async with driver(self._engine) as conn:
            row = await conn.fetchrow(SELECT_MONTH, month)
        return None if row is None else _close_of(row, True)

    async def statements(self, month: dt.date) -> list[Statement]:
        async with driver(self._engine) as conn:
            rows = await conn.fetch(SELECT_STATEMENTS, month)
        return [
            Statement(r["payee"], r["amount"], r["leaf_index"], decode_proof(r["proof"]))
            for r in rows
        ]

    async def verify(self, month: dt.date) -> tuple[int, list[str]]:
        """(statements checked, payees whose proof does not verify against the stored root).
        An unclosed month is a failure."""
        closed = await self.month(month)
        if closed is None:
            return 0, [f"{month_label(month)} is not closed"]
        statements = await self.statements(month)
        bad = [
            s.payee
            for s in statements
            if not payout_merkle.verify(month_label(month), s.payee, s.amount, s.proof, closed.root)
        ]
        if len(statements) != closed.statements:
            bad.append(f"{len(statements)} statements stored, {closed.statements} committed")
        return len(statements), bad
