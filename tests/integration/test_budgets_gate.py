"""BudgetGate (what the gateway calls) over real Postgres: the estimate bounds the actual cost,
an account without enough credit is refused (402 in OpenAI's error shape), a database
outage fails open or closed as configured."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.openai_schema import assert_conforms

from gateway.errors import PaymentRequired
from metering.budgets.gate import BudgetGate, BudgetUnavailable, InsufficientCredit
from metering.budgets.store import PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.ledger.book import PostgresLedger
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
        await gate.reserve(acct, "r0", "tiny", "", prompt_bytes=1000, max_tokens=50)
    err = PaymentRequired(f"Insufficient credit: {refused.value}")
    assert err.status == 402
    assert_conforms(msgspec.json.decode(err.body()), "ErrorResponse")
    await PostgresLedger(engine).top_up(acct, 10_000)
    held = await gate.reserve(acct, "r1", "tiny", "", prompt_bytes=1000, max_tokens=50, n=2)
    assert held == 1064 + 2 * 50 * 2  # (1000 + 64 overhead) x 1 + 100 tokens x 2 micro
    await gate.settle("r1", "tiny", "", dt.datetime.now(dt.UTC), 900, 40, charged=True)
    assert await PostgresBudgets(engine).available(acct) == 10_000 - (900 + 80)
    held = await gate.reserve(acct, "r2", "tiny", "", prompt_bytes=10, max_tokens=None)
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


async def test_the_gateway_answers_402_without_credit_and_settles_after_serving(
    engine: AsyncEngine, database_url: str
) -> None:
    from litestar.testing import AsyncTestClient
    from support.gateway_harness import make_harness

    from gateway.app import create_app
    from gateway.auth import Authenticator, PostgresKeyStore
    from royalty.db import create_engine

    h = make_harness()
    engines: list[AsyncEngine] = []

    async def start() -> None:
        e = create_engine(database_url, pool_size=4)
        engines.append(e)
        h.services.auth = Authenticator(PostgresKeyStore(e), ttl_s=0.0)
        h.services.inference.budget = BudgetGate(
            PostgresBudgets(e), PostgresCatalog(e), refresh_s=0
        )

    async def stop() -> None:
        await h.services.inference.drain()
        for e in engines:
            await e.dispose()

    await PostgresCatalog(engine).set_price(
        "royalty-tiny", "", 1_000_000, 1_000_000, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    key, _ = await PostgresKeyStore(engine).create("buyer", frozenset({"inference"}), None, None)
    hdr = {"Authorization": f"Bearer {key}"}
    body = {"model": "recipes", "prompt": "Recipe:", "max_tokens": 16}
    async with AsyncTestClient(
        app=create_app(h.services, on_startup=[start], on_shutdown=[stop])
    ) as c:
        r = await c.post("/v1/completions", json=body, headers=hdr)
        assert r.status_code == 402, r.text
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert_conforms(r.json(), "ErrorResponse")
        async with driver(engine) as conn:
            buyer = await conn.fetchval("SELECT id FROM accounts WHERE name = 'buyer'")
        await PostgresLedger(engine).top_up(buyer, 1_000)
        r = await c.post("/v1/completions", json=body, headers=hdr)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        cost = usage["prompt_tokens"] + usage["completion_tokens"]  # 1 micro a token
        # the settle runs off the response path, on the app's loop
        for _ in range(100):
            if await PostgresBudgets(engine).available(buyer) == 1_000 - cost:
                break
            await asyncio.sleep(0.05)
        assert await PostgresBudgets(engine).available(buyer) == 1_000 - cost
