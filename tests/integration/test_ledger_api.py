"""`GET /v1/me/earnings` and `GET /v1/me/statements/{month}` against real Postgres: each key
sees only its own account; statements carry proofs that verify against the month's root."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine
from support.app import app_over_postgres
from support.openai_schema import assert_conforms
from support.usage_events import usage_event

from gateway.auth import PostgresKeyStore
from gateway.container import Services
from metering.catalog import PostgresCatalog
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory
from metering.payouts import merkle as payout_merkle
from metering.payouts.close import PostgresPayouts
from metering.service import MeteringService
from metering.usage.store import PostgresUsageStore

pytestmark = pytest.mark.integration
T0 = dt.datetime(2026, 10, 2, tzinfo=dt.UTC)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[AsyncTestClient[Any]]:
    async def wire(services: Services, engine: AsyncEngine) -> None:
        services.metering = MeteringService(engine)

    async with app_over_postgres(database_url, wire) as c:
        yield c


async def test_each_key_sees_only_its_own_earnings_and_statements(
    engine: AsyncEngine, client: AsyncTestClient[Any]
) -> None:
    keys = PostgresKeyStore(engine)
    hdr = {}
    ids = {}
    for name, scope in (("alice", "contributor"), ("bob", "contributor"), ("payer", "inference")):
        k, info = await keys.create(name, frozenset({scope}), None, None)
        hdr[name] = {"Authorization": f"Bearer {k}"}
    from metering.pg import driver

    async with driver(engine) as conn:
        for r in await conn.fetch("SELECT id, name FROM accounts"):
            ids[r["name"]] = r["id"]
    await PostgresCatalog(engine).set_price(
        "tiny", "", 1_000_000, 3_000_000, T0 - dt.timedelta(days=30)
    )
    events = [
        usage_event(
            f"api-{i}",
            account_id=ids["payer"],
            started_at=T0 + dt.timedelta(hours=i),
            prompt_tokens=500,
            completion_tokens=200,
        )
        for i in range(20)
    ]
    await PostgresUsageStore(engine).insert_batch(events)
    directory = InMemoryAdapterDirectory({"recipes": AdapterInfo(ids["bob"], {ids["alice"]: 3})})
    await PostingWorker(engine, directory).drain()

    r = await client.get("/v1/me/earnings", headers=hdr["alice"])
    assert r.status_code == 200, r.text
    mine = r.json()
    assert mine["account_id"] == ids["alice"]
    assert [m["month"] for m in mine["months"]] == ["2026-10"]
    assert (
        mine["months"][0]["status"] == "open" and mine["months"][0]["adapter_owner"] == "0.000000"
    )
    # 20 events x 0.0011 credits; the data share is 50 % under the default policy
    assert mine["months"][0]["total_micros"] == 20 * 1100 // 2
    bob = (await client.get("/v1/me/earnings", headers=hdr["bob"])).json()
    assert bob["account_id"] == ids["bob"] and bob["months"][0]["contributor"] == "0.000000"
    assert bob["months"][0]["total_micros"] == 20 * 1100 * 20 // 100

    r = await client.get("/v1/me/statements/2026-10", headers=hdr["alice"])
    assert r.status_code == 404  # not closed yet
    assert_conforms(r.json(), "ErrorResponse")
    # one payer made all of the revenue: the wash-traffic check is not what this test is about
    closed = await PostgresPayouts(engine).close(dt.date(2026, 10, 1), wash=None)
    r = await client.get("/v1/me/statements/2026-10", headers=hdr["alice"])
    assert r.status_code == 200, r.text
    st = r.json()
    assert st["merkle_root"] == closed.root.hex()
    assert [s["payee"] for s in st["statements"]] == ["contributor:alice"]
    line = st["statements"][0]
    assert payout_merkle.verify(
        "2026-10", line["payee"], line["amount_micros"], line["proof"], closed.root
    )
    r = await client.get("/v1/me/statements/2026-10", headers=hdr["payer"])
    assert r.status_code == 404  # the payer earned nothing; it sees nobody else's lines
    r = await client.get("/v1/me/statements/2026-13", headers=hdr["alice"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_month"
    assert (await client.get("/v1/me/earnings")).status_code == 401
    payer = (await client.get("/v1/me/earnings", headers=hdr["payer"])).json()
    assert payer["months"] == [] and payer["credit_available"] == "-0.022000"


async def test_admin_credits_and_prices(engine: AsyncEngine, client: AsyncTestClient[Any]) -> None:
    keys = PostgresKeyStore(engine)
    admin, _ = await keys.create("root", frozenset({"admin"}), None, None)
    user, _ = await keys.create("user", frozenset({"inference"}), None, None)
    hdr = {"Authorization": f"Bearer {admin}"}
    r = await client.post(
        "/v1/admin/credits", json={"account": "shop", "amount": "2.5", "create": True}, headers=hdr
    )
    assert r.status_code == 201, r.text
    assert r.json()["available"] == "2.500000"
    r = await client.post(
        "/v1/admin/credits", json={"account": "shop", "amount": "0.0000001"}, headers=hdr
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "amount"
    assert_conforms(r.json(), "ErrorResponse")
    r = await client.post(
        "/v1/admin/credits", json={"account": "shop", "amount": "1"},
        headers={"Authorization": f"Bearer {user}"},
    )  # fmt: skip
    assert r.status_code == 403
    body = {"base_model": "tiny", "adapter": "recipes", "input": "1.5", "output": "4",
            "effective_from": "2026-12-01T00:00:00Z"}  # fmt: skip
    r = await client.post("/v1/admin/prices", json=body, headers=hdr)
    assert r.status_code == 201, r.text
    assert r.json()["input_per_million"] == "1.500000" and r.json()["adapter"] == "recipes"
    r = await client.post("/v1/admin/prices", json=body, headers=hdr)
    assert r.status_code == 400 and r.json()["error"]["code"] == "price_conflict"
    r = await client.get("/v1/admin/prices", headers=hdr)
    assert [p["version"] for p in r.json()["data"]] != [] and r.json()["data"][0][
        "base_model"
    ] == "tiny"
