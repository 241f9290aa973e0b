"""`GET /v1/me/holds` against real Postgres: a contributor and an adapter owner each read
every amount withheld from their own earnings (a wash-traffic hold, released after review;
self-dealing; a penalty) with its reason and kind; another contributor sees none of it; a key
without the `contributor` scope gets 403 in OpenAI's error shape."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from integration import test_ledger_api
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine
from support.openai_schema import assert_conforms
from support.usage_events import usage_event

from gateway.auth import PostgresKeyStore
from metering.catalog import PostgresCatalog
from metering.ledger.book import PostgresLedger
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory
from metering.payouts.close import PostgresPayouts
from metering.pg import driver
from metering.usage.record import UsageRecord
from metering.usage.store import PostgresUsageStore

pytestmark = pytest.mark.integration
OCT = dt.datetime(2026, 10, 2, tzinfo=dt.UTC)
NOV = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
client = test_ledger_api.client  # the gateway on this test's database


def event(rid: str, payer: int, at: dt.datetime) -> UsageRecord:
    return usage_event(
        rid, account_id=payer, started_at=at, prompt_tokens=500, completion_tokens=200
    )


async def withheld_of(engine: AsyncEngine, owner: int) -> dict[str, int]:
    """Straight from the ledger: the amounts withheld from an account's earnings, by reason."""
    async with driver(engine) as conn:
        rows = await conn.fetch(
            """SELECT w.reason, sum(w.amount) AS amount FROM withheld_items w
               JOIN ledger_accounts la ON la.id = w.beneficiary_id
               WHERE la.owner_id = $1 GROUP BY w.reason""",
            owner,
        )
    return {r["reason"]: int(r["amount"]) for r in rows}


async def test_each_contributor_reads_only_their_own_holds(
    engine: AsyncEngine, client: AsyncTestClient[Any]
) -> None:
    keys = PostgresKeyStore(engine)
    hdr: dict[str, dict[str, str]] = {}
    for name, scope in (
        ("alice", "contributor"), ("bob", "contributor"), ("eve", "contributor"),
        ("payer", "inference"),
    ):  # fmt: skip
        k, _ = await keys.create(name, frozenset({scope}), None, None)
        hdr[name] = {"Authorization": f"Bearer {k}"}
    async with driver(engine) as conn:
        ids = {r["name"]: r["id"] for r in await conn.fetch("SELECT id, name FROM accounts")}
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 3_000_000, OCT - dt.timedelta(days=30))  # fmt: skip
    store = PostgresUsageStore(engine)
    directory = InMemoryAdapterDirectory(
        {"recipes": AdapterInfo(ids["bob"], {ids["alice"]: 3, ids["eve"]: 1})}
    )
    worker = PostingWorker(engine, directory)
    hour = dt.timedelta(hours=1)
    # October: one payer makes ~91 % of the adapter's revenue (a hold at close); alice pays
    # for three requests herself (her share is self-dealing)
    await store.insert_batch(
        [event(f"o-{i}", ids["payer"], OCT + i * hour) for i in range(30)]
        + [event(f"self-{i}", ids["alice"], OCT + i * hour) for i in range(3)]
    )
    await worker.drain()
    await PostgresPayouts(engine).close(dt.date(2026, 10, 1))
    async with driver(engine) as conn:
        hold_txn = await conn.fetchval("SELECT id FROM ledger_transactions WHERE kind = 'hold'")
    assert hold_txn is not None
    await PostgresLedger(engine).reverse(hold_txn, "reviewed: genuine traffic")
    # November: alice is penalised after some events; later ones are withheld at posting
    await store.insert_batch([event(f"n-{i}", ids["payer"], NOV + i * hour) for i in range(4)])
    await worker.drain()
    await PostgresLedger(engine).penalize(ids["alice"], "", "plagiarised records")
    await store.insert_batch([event(f"m-{i}", ids["payer"], NOV + (9 + i) * hour) for i in range(4)])  # fmt: skip
    await worker.drain()

    r = await client.get("/v1/me/holds", headers=hdr["alice"])
    assert r.status_code == 200, r.text
    alice = r.json()
    assert alice["object"] == "list" and alice["account_id"] == ids["alice"]
    assert {(h["month"], h["kind"], h["account_kind"], h["released"]) for h in alice["data"]} == {
        ("2026-10", "hold", "contributor", True),
        ("2026-10", "self-dealing", "contributor", False),
        ("2026-11", "penalty", "contributor", False),
    }
    kinds = sorted((h["month"], h["kind"], h["reason"]) for h in alice["data"])
    assert [k[:2] for k in kinds] == [
        ("2026-10", "hold"), ("2026-10", "self-dealing"), ("2026-11", "penalty"),
        ("2026-11", "penalty"),
    ]  # fmt: skip
    assert kinds[0][2].startswith("hold for review: one payer made 90% of adapter 'recipes'")
    assert kinds[1][2] == "self-dealing: the payer is a data contributor of adapter 'recipes'"
    assert {k[2] for k in kinds[2:]} == {
        "penalty: plagiarised records", "penalty reversal #1: plagiarised records"
    }  # fmt: skip
    # every amount is the ledger's, and the released hold no longer counts as held
    ledger = await withheld_of(engine, ids["alice"])
    assert {h["reason"]: h["amount_micros"] for h in alice["data"]} == ledger
    assert alice["held_micros"] == sum(
        h["amount_micros"] for h in alice["data"] if h["kind"] != "hold"
    )
    assert all(h["amount"] == f"{h['amount_micros'] / 1e6:.6f}" for h in alice["data"])

    bob = (await client.get("/v1/me/holds", headers=hdr["bob"])).json()
    assert bob["account_id"] == ids["bob"]
    assert [(h["kind"], h["account_kind"], h["released"]) for h in bob["data"]] == [
        ("hold", "adapter_owner", True)
    ]
    assert {h["reason"]: h["amount_micros"] for h in bob["data"]} == await withheld_of(
        engine, ids["bob"]
    )
    # eve (a contributor of the same adapter) sees only her own October hold, never alice's
    # self-dealing or penalty, nor bob's owner hold
    eve = (await client.get("/v1/me/holds", headers=hdr["eve"])).json()
    assert eve["account_id"] == ids["eve"]
    assert [(h["kind"], h["account_kind"]) for h in eve["data"]] == [("hold", "contributor")]
    assert {h["reason"]: h["amount_micros"] for h in eve["data"]} == await withheld_of(
        engine, ids["eve"]
    )

    r = await client.get("/v1/me/holds", headers=hdr["payer"])
    assert r.status_code == 403
    assert_conforms(r.json(), "ErrorResponse")
    assert "'contributor' scope" in r.json()["error"]["message"]
    r = await client.get("/v1/me/holds")
    assert r.status_code == 401
    assert_conforms(r.json(), "ErrorResponse")
