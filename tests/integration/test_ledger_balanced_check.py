"""The deferred check that every ledger transaction sums to zero, now computed once per
ledger transaction per checking statement (migration 0009): it still refuses an unbalanced
transaction among many, interleaved with balanced ones, and entries added after an early
check (SET CONSTRAINTS ... IMMEDIATE) are checked again at COMMIT."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.ledger.audit import violations
from metering.pg import driver

pytestmark = pytest.mark.integration
NOV = dt.date(2026, 11, 1)
NEW_TXN = "INSERT INTO ledger_transactions (kind) VALUES ('topup') RETURNING id"
ENTRIES = """
INSERT INTO ledger_entries (txn_id, account_id, month, amount)
SELECT t, a, $3, x FROM unnest($1::bigint[], $2::bigint[], $4::bigint[]) AS e(t, a, x)
"""


async def accounts(conn: asyncpg.Connection) -> tuple[int, int]:
    rows = await conn.fetch("SELECT kind, id FROM ledger_accounts WHERE owner_id IS NULL")
    ids = {r["kind"]: r["id"] for r in rows}
    return ids["treasury"], ids["external"]


async def test_one_unbalanced_transaction_among_many_is_refused(engine: AsyncEngine) -> None:
    async with driver(engine) as conn:
        treasury, external = await accounts(conn)
        # 1,000 balanced entries in each of two transactions, interleaved: commits
        async with conn.transaction():
            a, b = await conn.fetchval(NEW_TXN), await conn.fetchval(NEW_TXN)
            txns = [a, b] * 1000
            accts = [treasury, external] * 1000
            amounts = [x for i in range(500) for x in (i + 1, i + 1, -(i + 1), -(i + 1))]
            await conn.execute(ENTRIES, txns, accts, NOV, amounts)
        # the same, with the last entry of the second transaction off by one: refused
        with pytest.raises(asyncpg.CheckViolationError, match="unbalanced by 1"):
            async with conn.transaction():
                a, b = await conn.fetchval(NEW_TXN), await conn.fetchval(NEW_TXN)
                await conn.execute(ENTRIES, [a, b] * 1000, accts, NOV, amounts[:-1] + [-499])
        assert await conn.fetchval("SELECT count(*) FROM ledger_entries") == 2000


async def test_entries_added_after_an_early_check_are_checked_again(engine: AsyncEngine) -> None:
    async with driver(engine) as conn:
        treasury, external = await accounts(conn)
        with pytest.raises(asyncpg.CheckViolationError, match="unbalanced by 5"):
            async with conn.transaction():
                t = await conn.fetchval(NEW_TXN)
                await conn.execute(ENTRIES, [t, t], [treasury, external], NOV, [3, -3])
                await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # checks now: balanced
                await conn.execute("SET CONSTRAINTS ALL DEFERRED")
                await conn.execute(ENTRIES, [t], [treasury], NOV, [5])
        assert await conn.fetchval("SELECT count(*) FROM ledger_entries") == 0
    assert await violations(engine) == []
