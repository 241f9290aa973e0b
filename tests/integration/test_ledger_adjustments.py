"""Late attribution re-splits posted events of an open month; a closed month refuses it;
re-applying the same weights is a no-op; conservation holds."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event

from metering.catalog import PostgresCatalog
from metering.ledger.adjustments import AdjustmentError, reattribute
from metering.ledger.audit import violations
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory
from metering.payouts.close import PostgresPayouts
from metering.pg import driver
from metering.service import MeteringService
from metering.usage.store import PostgresUsageStore

pytestmark = pytest.mark.integration
T0 = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)


async def test_reattribution_moves_the_data_share_before_the_close_only(
    engine: AsyncEngine,
) -> None:
    async with driver(engine) as conn:
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING name, id",
            ["owner", "carol", "dan", "payer1", "payer2"],
        )
    ids = {r["name"]: r["id"] for r in rows}
    await PostgresCatalog(engine).set_price(
        "tiny", "", 1_000_000, 1_000_000, T0 - dt.timedelta(days=9)
    )
    directory = InMemoryAdapterDirectory(
        {"recipes": AdapterInfo(ids["owner"], {ids["carol"]: 1, ids["dan"]: 1})}
    )
    evs = [
        usage_event(
            f"x{i}",
            account_id=ids["payer1" if i % 2 else "payer2"],
            started_at=T0 + dt.timedelta(hours=i),
            prompt_tokens=1000,
            completion_tokens=1000,
        )
        for i in range(4)
    ]
    await PostgresUsageStore(engine).insert_batch(evs)
    await PostingWorker(engine, directory).drain()
    service = MeteringService(engine)
    carol0 = (await service.earnings(ids["carol"])).months[0].total_micros
    assert carol0 == 4 * 500  # 2,000 micro charge, data share 1,000, half each

    txn = await reattribute(engine, directory, "x0", {ids["carol"]: 3, ids["dan"]: 1})
    assert txn is not None
    assert await reattribute(engine, directory, "x0", {ids["carol"]: 3, ids["dan"]: 1}) is None
    carol = (await service.earnings(ids["carol"])).months[0].total_micros
    assert carol == carol0 + 250  # 750 instead of 500 for x0
    assert await violations(engine) == []

    oct_close = await PostgresPayouts(engine).close(dt.date(2026, 10, 1), wash=None)
    with pytest.raises(AdjustmentError, match="closed month"):
        await reattribute(engine, directory, "x1", {ids["dan"]: 1})
    again = await PostgresPayouts(engine).close(dt.date(2026, 10, 1))
    assert again.already_closed and again.root == oct_close.root
    assert (await PostgresPayouts(engine).verify(dt.date(2026, 10, 1)))[1] == []
    assert await violations(engine) == []
    with pytest.raises(AdjustmentError):
        await reattribute(engine, directory, "nope", {ids["dan"]: 1})
