"""`POST /v1/admin/credits` and `royalty credits add` against real Postgres (issue 13, item 9):
an `Idempotency-Key` credits at most once (retries and concurrent duplicates replay the first
result; another body with the same key is a 422), keys expire after their retention, and an
unknown account is a 404 unless the request says `"create": true`."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine
from support.app import app_over_postgres
from support.openai_schema import assert_conforms
from typer.testing import CliRunner, Result

from gateway.auth import PostgresKeyStore
from gateway.container import Services
from metering.ledger import audit
from metering.ledger.book import TOPUP_KEY_RETENTION
from metering.pg import driver
from metering.service import MeteringService
from royalty.cli.main import app as cli

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[AsyncTestClient[Any]]:
    async def wire(services: Services, engine: AsyncEngine) -> None:
        services.metering = MeteringService(engine)

    async with app_over_postgres(database_url, wire, pool_size=8) as c:
        yield c


@pytest.fixture
async def admin(engine: AsyncEngine) -> dict[str, str]:
    key, _ = await PostgresKeyStore(engine).create("root", frozenset({"admin"}), None, None)
    return {"Authorization": f"Bearer {key}"}


async def topups(engine: AsyncEngine, account: str) -> tuple[int, int]:
    """(top-up transactions, consumer balance) of `account`."""
    async with driver(engine) as conn:
        row = await conn.fetchrow(
            """
            SELECT count(DISTINCT t.id) AS n, coalesce(max(la.balance), 0) AS balance
            FROM accounts a
            LEFT JOIN ledger_accounts la ON la.kind = 'consumer' AND la.owner_id = a.id
            LEFT JOIN ledger_entries e ON e.account_id = la.id
            LEFT JOIN ledger_transactions t ON t.id = e.txn_id AND t.kind = 'topup'
            WHERE a.name = $1
            """,
            account,
        )
    return int(row["n"]), int(row["balance"])


async def make_account(engine: AsyncEngine, name: str) -> None:
    async with driver(engine) as conn:
        await conn.execute("INSERT INTO accounts (name) VALUES ($1)", name)


async def test_a_retried_request_credits_once(
    engine: AsyncEngine, client: AsyncTestClient[Any], admin: dict[str, str]
) -> None:
    await make_account(engine, "shop")
    hdr = {**admin, "Idempotency-Key": "order-1"}
    first = await client.post("/v1/admin/credits", json={"account": "shop", "amount": "2.5"},
                              headers=hdr)  # fmt: skip
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    for amount in ("2.5", "2.500000"):  # the same amount, written differently: the same request
        again = await client.post(
            "/v1/admin/credits", json={"account": "shop", "amount": amount}, headers=hdr
        )
        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
    assert await topups(engine, "shop") == (1, 2_500_000)
    # A new key is a new top-up; no key at all is never deduplicated.
    r = await client.post("/v1/admin/credits", json={"account": "shop", "amount": "1"},
                          headers={**admin, "Idempotency-Key": "order-2"})  # fmt: skip
    assert r.status_code == 201 and r.json()["available"] == "3.500000"
    for _ in range(2):
        r = await client.post(
            "/v1/admin/credits", json={"account": "shop", "amount": "1"}, headers=admin
        )
    assert await topups(engine, "shop") == (4, 5_500_000)
    assert await audit.check(engine) == []


async def test_concurrent_identical_requests_credit_once(
    engine: AsyncEngine, client: AsyncTestClient[Any], admin: dict[str, str]
) -> None:
    hdr = {**admin, "Idempotency-Key": "burst"}
    body = {"account": "burst-co", "amount": "7", "create": True}
    answers = await asyncio.gather(
        *(client.post("/v1/admin/credits", json=body, headers=hdr) for _ in range(12))
    )
    assert [a.status_code for a in answers] == [201] * 12, [a.text for a in answers]
    assert len({a.json()["transaction"] for a in answers}) == 1
    assert {a.json()["available"] for a in answers} == {"7.000000"}
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 11
    assert await topups(engine, "burst-co") == (1, 7_000_000)
    assert await audit.check(engine) == []


async def test_the_same_key_with_another_body_is_refused(
    engine: AsyncEngine, client: AsyncTestClient[Any], admin: dict[str, str]
) -> None:
    await make_account(engine, "shop")
    await make_account(engine, "other")
    hdr = {**admin, "Idempotency-Key": "k-1"}
    r = await client.post("/v1/admin/credits", json={"account": "shop", "amount": "1"},
                          headers=hdr)  # fmt: skip
    assert r.status_code == 201
    for body in (
        {"account": "shop", "amount": "2"},
        {"account": "other", "amount": "1"},
        {"account": "shop", "amount": "1", "create": True},
    ):
        r = await client.post("/v1/admin/credits", json=body, headers=hdr)
        assert r.status_code == 422, (body, r.text)
        assert_conforms(r.json(), "ErrorResponse")
        err = r.json()["error"]
        assert err["code"] == "idempotency_key_reused" and err["param"] == "Idempotency-Key"
    assert await topups(engine, "shop") == (1, 1_000_000)
    assert await topups(engine, "other") == (0, 0)
    for bad in ("", "x" * 256, "tab\there", "é".encode()):
        r = await client.post(
            "/v1/admin/credits", json={"account": "shop", "amount": "1"},
            headers={**admin, "Idempotency-Key": bad},
        )  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_idempotency_key"


async def test_an_expired_key_is_a_new_request(
    engine: AsyncEngine, client: AsyncTestClient[Any], admin: dict[str, str]
) -> None:
    await make_account(engine, "shop")
    hdr = {**admin, "Idempotency-Key": "old"}
    r = await client.post("/v1/admin/credits", json={"account": "shop", "amount": "1"},
                          headers=hdr)  # fmt: skip
    assert r.status_code == 201
    assert TOPUP_KEY_RETENTION >= dt.timedelta(hours=24)
    async with driver(engine) as conn:  # a day before the retention runs out: still replayed
        await conn.execute(
            "UPDATE topup_requests SET created_at = now() - $1::interval",
            TOPUP_KEY_RETENTION - dt.timedelta(days=1),
        )
    r = await client.post("/v1/admin/credits", json={"account": "shop", "amount": "1"},
                          headers=hdr)  # fmt: skip
    assert r.headers.get("idempotent-replayed") == "true"
    async with driver(engine) as conn:
        await conn.execute(
            "UPDATE topup_requests SET created_at = now() - $1::interval",
            TOPUP_KEY_RETENTION + dt.timedelta(minutes=1),
        )
    r = await client.post("/v1/admin/credits", json={"account": "shop", "amount": "5"},
                          headers=hdr)  # fmt: skip
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    assert await topups(engine, "shop") == (2, 6_000_000)
    async with driver(engine) as conn:
        assert await conn.fetchval("SELECT count(*) FROM topup_requests") == 1


async def test_an_unknown_account_is_a_404_unless_created(
    engine: AsyncEngine, client: AsyncTestClient[Any], admin: dict[str, str]
) -> None:
    r = await client.post(
        "/v1/admin/credits", json={"account": "typo-shop", "amount": "1"}, headers=admin
    )
    assert r.status_code == 404, r.text
    assert_conforms(r.json(), "ErrorResponse")
    assert r.json()["error"]["code"] == "account_not_found"
    assert r.json()["error"]["param"] == "account"
    async with driver(engine) as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts WHERE name = 'typo-shop'") == 0
    r = await client.post(
        "/v1/admin/credits",
        json={"account": "new-shop", "amount": "1", "create": True},
        headers={**admin, "Idempotency-Key": "new"},
    )
    assert r.status_code == 201 and r.json()["available"] == "1.000000"
    for bad in ("", " ", "nul\u0000name", "x" * 201):
        r = await client.post(
            "/v1/admin/credits", json={"account": bad, "amount": "1", "create": True},
            headers=admin,
        )  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "account", bad


async def royalty(database_url: str, *args: str) -> Result:
    # The CLI runs its own event loop: give it a thread.
    return await asyncio.to_thread(
        CliRunner().invoke, cli, [*args, "--database-url", database_url], catch_exceptions=False
    )


async def test_the_cli_creates_accounts_and_takes_an_idempotency_key(
    engine: AsyncEngine, database_url: str
) -> None:
    add = ("credits", "add", "--account", "cli-co", "--amount", "3")
    r = await royalty(database_url, *add, "--idempotency-key", "batch-7")
    assert r.exit_code == 0 and r.stdout == "cli-co 3.000000\n", r.output
    r = await royalty(database_url, *add, "--idempotency-key", "batch-7")  # a rerun
    assert r.exit_code == 0 and r.stdout == "cli-co 3.000000\n", r.output
    assert await topups(engine, "cli-co") == (1, 3_000_000)
    r = await royalty(database_url, "credits", "add", "--account", "cli-co", "--amount", "4",
                      "--idempotency-key", "batch-7")  # fmt: skip
    assert r.exit_code == 1 and "different request" in r.output
    r = await royalty(database_url, *add)  # no key: a new top-up each time
    assert r.exit_code == 0 and r.stdout == "cli-co 6.000000\n"
    assert await topups(engine, "cli-co") == (2, 6_000_000)
