"""BudgetGate (what the gateway calls) over real Postgres: the estimate bounds the actual cost,
an account without enough credit is refused (402 in OpenAI's error shape), a database
outage fails open or closed as configured."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec
import pytest
from openai_schema import assert_conforms
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import PaymentRequired
from metering.budget_gate import BudgetGate, BudgetUnavailable, InsufficientCredit
from metering.budgets import PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.ledger import PostgresLedger
from metering.pg import driver
from metering.pricing import PriceBook

pytestmark = pytest.mark.integration


async def test_reserve_settle_and_refuse(engine: AsyncEngine) -> None:
    async with driver(engine) as conn:
        acct = int(await conn.fetchval("INSERT INTO accounts (name) VALUES ('c') RETURNING id"))
    catalog = PostgresCatalog(engine)
    await catalog.set_price(
        "tiny", "", 1_000_000, 2_000_000, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    gate = BudgetGate(PostgresBudgets(engine), catalog, default_max_tokens=100)
    with pytest.raises(InsufficientCredit) as refused:
        await gate.reserve(acct, "r0", "tiny", "", prompt_chars=1000, max_tokens=50)
    err = PaymentRequired(f"Insufficient credit: {refused.value}")
    assert err.status == 402
    assert_conforms(msgspec.json.decode(err.body()), "ErrorResponse")
    await PostgresLedger(engine).top_up(acct, 10_000)
    held = await gate.reserve(acct, "r1", "tiny", "", prompt_chars=1000, max_tokens=50, n=2)
    assert held == 1064 + 2 * 50 * 2  # (1000 + 64 overhead) x 1 + 100 tokens x 2 micro
    await gate.settle("r1", "tiny", "", dt.datetime.now(dt.UTC), 900, 40, charged=True)
    assert await PostgresBudgets(engine).available(acct) == 10_000 - (900 + 80)
    held = await gate.reserve(acct, "r2", "tiny", "", prompt_chars=10, max_tokens=None)
    assert held == 74 + 200  # default_max_tokens
    await gate.settle("r2", "tiny", "", dt.datetime.now(dt.UTC), 0, 0, charged=False)
    assert await PostgresBudgets(engine).available(acct) == 10_000 - 980


class DownBudgets:
    async def reserve(self, account_id: int, request_id: str, amount: int) -> None:
        raise asyncpg.CannotConnectNowError("the database system is starting up")

    async def settle(self, request_id: str, actual: int) -> None:
        raise OSError("connection refused")

    async def release(self, request_id: str) -> None: ...

    async def available(self, account_id: int) -> int:
        return 0


class Book:
    async def book(self) -> PriceBook:
        return PriceBook()


async def test_a_database_outage_fails_open_by_default_or_closed_when_asked() -> None:
    open_gate = BudgetGate(DownBudgets(), Book())
    assert await open_gate.reserve(1, "r", "tiny", "", 10, 10) == 0
    assert open_gate.unchecked == 1
    await open_gate.settle("r", "tiny", "", dt.datetime.now(dt.UTC), 1, 1, charged=True)
    with pytest.raises(BudgetUnavailable):
        await BudgetGate(DownBudgets(), Book(), fail_open=False).reserve(1, "r", "tiny", "", 10, 10)
