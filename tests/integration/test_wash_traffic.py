"""Wash-traffic holds for repeated prompts and bursts, at close: each heuristic holds exactly
the adapter owner's and contributors' shares of the events it should, and nothing else
(diverse payers, a payer repeating a prompt now and then, an evenly paced heavy user are
paid); an event flagged by both heuristics is held once; re-running the holds or the close
changes nothing; the ledger's invariants hold throughout."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event

from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory
from metering.payouts.holds import WashPolicy, apply_holds
from metering.pg import driver
from metering.service import MeteringService
from metering.usage.record import UsageRecord, prompt_digest
from metering.usage.store import PostgresUsageStore

pytestmark = pytest.mark.integration
T0 = dt.datetime(2026, 10, 2, tzinfo=dt.UTC)
OCT = dt.date(2026, 10, 1)
POLICY = WashPolicy()  # the defaults are what is tested


def event(rid: str, payer: int, at: dt.timedelta, prompt: str) -> UsageRecord:
    return usage_event(
        rid, account_id=payer, started_at=T0 + at, adapter="busy", prompt_tokens=800,
        completion_tokens=300, prompt_digest=prompt_digest(prompt),
    )  # fmt: skip


def s(x: float) -> dt.timedelta:
    return dt.timedelta(seconds=x)


async def held_by_event(engine: AsyncEngine, ledger_ids: list[int]) -> dict[str, int]:
    """What each event paid the given ledger accounts (from its posting)."""
    async with driver(engine) as conn:
        rows = await conn.fetch(
            """SELECT p.event_id, sum(x.amount) AS amount
               FROM usage_postings p, unnest(p.payees, p.amounts) AS x(payee, amount)
               WHERE x.payee = ANY($1::bigint[]) GROUP BY p.event_id""",
            ledger_ids,
        )
    return {r["event_id"]: int(r["amount"]) for r in rows}


async def test_repeated_prompts_and_bursts_are_held_once_and_normal_traffic_is_paid(
    engine: AsyncEngine,
) -> None:
    names = ["own", "carol", "steady", "rep", "casual", "burst", "both"]
    names += [f"p{i}" for i in range(5)]
    async with driver(engine) as conn:
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING name, id", names
        )
    ids = {r["name"]: r["id"] for r in rows}
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 2_000_000, T0 - s(86400 * 9))
    directory = InMemoryAdapterDirectory({"busy": AdapterInfo(ids["own"], {ids["carol"]: 1})})
    evs: list[UsageRecord] = []
    # normal: five payers, distinct prompts, minutes apart
    evs += [event(f"n{p}-{i}", ids[f"p{p}"], s(600 * i + p), f"q {p} {i}") for p in range(5) for i in range(20)]  # fmt: skip
    # an evenly paced heavy user: one request every 2 s for 4 minutes (30 a minute, no peak)
    evs += [event(f"steady-{i}", ids["steady"], s(3600 + 2 * i), f"steady {i}") for i in range(120)]  # fmt: skip
    # a casual repeater: "hello" 25 times among 100 requests (25 % < 30 %): paid
    evs += [event(f"casual-{i}", ids["casual"], s(300 * i + 7), "hello" if i % 4 == 0 else f"c {i}") for i in range(100)]  # fmt: skip
    # repeated prompts: 25 of 30 requests, paced 10 minutes apart (no burst), the same prompt
    # up to case and spaces (the digest normalises them)
    rep = [event(f"rep-{i}", ids["rep"], s(600 * i + 11), "Buy  ME" if i % 2 else "buy me") for i in range(25)]  # fmt: skip
    evs += rep + [event(f"rep-x{i}", ids["rep"], s(600 * (25 + i) + 11), f"r {i}") for i in range(5)]  # fmt: skip
    # a burst: one request every 5 minutes, then 40 within 20 s (a minute's median of 1)
    paced = [event(f"burst-p{i}", ids["burst"], s(300 * i + 13), f"b {i}") for i in range(20)]
    spike = [event(f"burst-s{i}", ids["burst"], s(7200 + i / 2), f"bs {i}") for i in range(40)]
    evs += paced + spike
    # both: 30 identical prompts within 30 s (a repeat and a burst) plus 30 paced distinct ones
    both_spike = [event(f"both-s{i}", ids["both"], s(10800 + i), "same") for i in range(30)]
    evs += both_spike + [event(f"both-p{i}", ids["both"], s(300 * i + 17), f"d {i}") for i in range(30)]  # fmt: skip
    await PostgresUsageStore(engine).insert_batch(evs)
    await PostingWorker(engine, directory).drain()

    async with driver(engine) as conn:
        ledger = {
            r["owner_id"]: r["id"]
            for r in await conn.fetch(
                "SELECT owner_id, id FROM ledger_accounts WHERE kind IN ('contributor', 'adapter_owner')"
            )
        }
    earned = await held_by_event(engine, [ledger[ids["carol"]], ledger[ids["own"]]])
    service = MeteringService(engine)
    closed = await service.payouts.close(OCT, POLICY)
    assert closed.charges == closed.payouts + closed.fees + closed.withheld
    assert (await service.payouts.verify(OCT))[1] == []

    async with driver(engine) as conn:
        held = {
            r["event_id"]: r["heuristic"]
            for r in await conn.fetch("SELECT event_id, heuristic FROM held_events")
        }
    expected = {e.request_id: "repeated_prompt" for e in rep + both_spike}
    expected |= {e.request_id: "burst" for e in spike}
    assert held == expected  # nothing else: not the paced, steady, casual or normal events
    carol = await service.earnings(ids["carol"])
    owner = await service.earnings(ids["own"])
    by_kind: dict[str, int] = {}
    for w in carol.withheld + owner.withheld:
        kind = "repeated" if "repeated prompts" in w.reason else "burst"
        by_kind[kind] = by_kind.get(kind, 0) + round(float(w.amount) * 1_000_000)
    assert by_kind == {
        "repeated": sum(earned[e.request_id] for e in rep + both_spike),
        "burst": sum(earned[e.request_id] for e in spike),
    }
    reasons = sorted({w.reason for w in carol.withheld})
    assert reasons == [
        "hold for review: one payer sent the same prompt 25 times to adapter 'busy' this month "
        "(83% of its requests there; wash-traffic check royalty-wash/2: repeated prompts)",
        "hold for review: one payer sent the same prompt 30 times to adapter 'busy' this month "
        "(50% of its requests there; wash-traffic check royalty-wash/2: repeated prompts)",
        "hold for review: one payer sent up to 40 requests to adapter 'busy' within 60 s, "
        "against its usual 1 a minute (wash-traffic check royalty-wash/2: bursts)",
    ]
    total = sum(earned.values())
    assert carol.months[0].total_micros + owner.months[0].total_micros == total - sum(
        by_kind.values()
    )
    # idempotent: the holds again hold nothing more; the close again is a no-op
    async with driver(engine) as conn, conn.transaction():
        assert await apply_holds(conn, OCT, POLICY) == 0
        assert await conn.fetchval("SELECT count(*) FROM held_events") == len(expected)
    again = await service.payouts.close(OCT, POLICY)
    assert again.already_closed and again.root == closed.root
    assert await violations(engine) == []


async def test_events_without_a_prompt_digest_are_never_repeats(engine: AsyncEngine) -> None:
    """Usage from before digests existed (NULL) is judged by the other heuristics only."""
    async with driver(engine) as conn:
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING name, id",
            ["own", "carol", "old", "p"],
        )
    ids = {r["name"]: r["id"] for r in rows}
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 2_000_000, T0 - s(86400 * 9))
    directory = InMemoryAdapterDirectory({"busy": AdapterInfo(ids["own"], {ids["carol"]: 1})})
    old = [
        msgspec.structs.replace(event(f"old-{i}", ids["old"], s(600 * i), "x"), prompt_digest=None)
        for i in range(30)
    ]
    others = [event(f"p-{i}", ids["p"], s(600 * i + 5), f"p {i}") for i in range(30)]
    await PostgresUsageStore(engine).insert_batch(old + others)
    await PostingWorker(engine, directory).drain()
    await MeteringService(engine).payouts.close(OCT, POLICY)
    async with driver(engine) as conn:
        assert await conn.fetchval("SELECT count(*) FROM held_events") == 0
    assert (await MeteringService(engine).earnings(ids["carol"])).withheld == []
    assert await violations(engine) == []
