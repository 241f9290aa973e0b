"""Wash-traffic holds at close: an adapter whose revenue comes almost all from one payer has
its owner's and contributors' earnings from that payer withheld, with a readable reason; an
adapter with diverse payers is paid; the month still conserves and every proof verifies."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event

from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory
from metering.payouts.holds import WashPolicy
from metering.pg import driver
from metering.service import MeteringService
from metering.usage.record import UsageRecord
from metering.usage.store import PostgresUsageStore

pytestmark = pytest.mark.integration
T0 = dt.datetime(2026, 10, 2, tzinfo=dt.UTC)
OCT = dt.date(2026, 10, 1)


def event(i: int, payer: int, adapter: str) -> UsageRecord:
    return usage_event(
        f"h-{i}", account_id=payer, started_at=T0 + dt.timedelta(minutes=i), adapter=adapter,
        prompt_tokens=800, completion_tokens=300,
    )  # fmt: skip


async def test_a_dominating_payer_puts_the_adapters_earnings_on_hold(engine: AsyncEngine) -> None:
    async with driver(engine) as conn:
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING name, id",
            ["own1", "own2", "carol", "dan", "whale", "p1", "p2", "p3", "p4"],
        )
    ids = {r["name"]: r["id"] for r in rows}
    await PostgresCatalog(engine).set_price(
        "tiny", "", 1_000_000, 2_000_000, T0 - dt.timedelta(days=9)
    )
    directory = InMemoryAdapterDirectory(
        {
            "pumped": AdapterInfo(ids["own1"], {ids["carol"]: 1}),
            "honest": AdapterInfo(ids["own2"], {ids["dan"]: 1}),
        }
    )
    evs = [event(i, ids["whale"], "pumped") for i in range(45)]
    evs += [event(100 + i, ids["p1"], "pumped") for i in range(5)]  # whale: 90 %
    evs += [event(200 + i, ids[f"p{1 + i % 4}"], "honest") for i in range(40)]
    await PostgresUsageStore(engine).insert_batch(evs)
    await PostingWorker(engine, directory).drain()
    service = MeteringService(engine)
    carol_before = (await service.earnings(ids["carol"])).months[0].total_micros
    closed = await service.payouts.close(OCT, WashPolicy(dominant_ppm=800_000, min_events=20))
    assert closed.charges == closed.payouts + closed.fees + closed.withheld
    assert (await service.payouts.verify(OCT))[1] == []
    carol = await service.earnings(ids["carol"])
    assert carol.months[0].total_micros == carol_before // 10 * 1  # only p1's 5 events stay paid
    assert [w.reason for w in carol.withheld] == [
        "hold for review: one payer made 90% of adapter 'pumped''s revenue this month "
        "(wash-traffic check royalty-wash/2: dominant payer)"
    ]
    dan = await service.earnings(ids["dan"])
    assert dan.withheld == [] and dan.months[0].total_micros > 0
    payees = {s.payee for s in await service.payouts.statements(OCT)}
    assert "contributor:dan" in payees and "adapter_owner:own2" in payees
    assert await violations(engine) == []
