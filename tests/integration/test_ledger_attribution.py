"""Per-response weights stored on usage events (`attribution.contributors[].weight_ppm`)
divide the data share; events without them fall back to the adapter's baseline."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event

from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory, UsageEventAttribution
from metering.pg import driver
from metering.usage.record import UsageRecord
from metering.usage.store import PostgresUsageStore

pytestmark = pytest.mark.integration
T0 = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)


async def test_response_weights_divide_the_data_share(engine: AsyncEngine) -> None:
    async with driver(engine) as conn:
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING name, id",
            ["owner", "carol", "dan", "payer"],
        )
    ids = {r["name"]: r["id"] for r in rows}
    await PostgresCatalog(engine).set_price(
        "tiny", "", 1_000_000, 1_000_000, T0 - dt.timedelta(days=9)
    )
    directory = InMemoryAdapterDirectory(
        {"recipes": AdapterInfo(ids["owner"], {ids["carol"]: 1, ids["dan"]: 1})}
    )
    weights = {"object": "attribution", "contributors": [
        {"id": ids["carol"], "weight": 0.7, "weight_ppm": 700_000},
        {"id": ids["dan"], "weight": 0.3, "weight_ppm": 300_000},
    ]}  # fmt: skip

    def ev(rid: str, attribution: str | None) -> UsageRecord:
        return usage_event(
            rid, account_id=ids["payer"], started_at=T0, prompt_tokens=1000,
            completion_tokens=1000, attribution=attribution,
        )  # fmt: skip

    await PostgresUsageStore(engine).insert_batch(
        [ev("with", json.dumps(weights)), ev("without", None)]
    )
    await PostingWorker(engine, directory, UsageEventAttribution(engine)).drain()
    async with driver(engine) as conn:
        ledger = {
            r["owner_id"]: r["id"]
            for r in await conn.fetch(
                "SELECT owner_id, id FROM ledger_accounts WHERE kind = 'contributor'"
            )
        }
        got = {
            r["event_id"]: dict(zip(r["payees"], r["amounts"], strict=True))
            for r in await conn.fetch("SELECT event_id, payees, amounts FROM usage_postings")
        }
    # 2,000 micro-credits; data share 1,000
    assert got["with"][ledger[ids["carol"]]] == 700 and got["with"][ledger[ids["dan"]]] == 300
    assert got["without"][ledger[ids["carol"]]] == 500 and got["without"][ledger[ids["dan"]]] == 500
    assert await violations(engine) == []
