"""Penalising one training record: the open month's credits from it are reversed to
`withheld` exactly (its part, by the rule in metering.ledger.record_penalties, of each response that
names it), a closed month is untouched, later events withhold its part at posting, an
influence re-split does not hand it back, and the ledger's invariants hold after."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event
from typer.testing import CliRunner

from metering.catalog import PostgresCatalog
from metering.ledger.adjustments import reattribute
from metering.ledger.audit import violations
from metering.ledger.book import LedgerError
from metering.ledger.posting import PostingWorker
from metering.ledger.record_penalties import penalize_record, record_part
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory, UsageEventAttribution
from metering.payouts.close import PostgresPayouts
from metering.pg import driver
from metering.service import MeteringService
from metering.usage.record import UsageRecord
from metering.usage.store import PostgresUsageStore
from royalty.cli.main import app

pytestmark = pytest.mark.integration
SEP = dt.datetime(2026, 9, 10, tzinfo=dt.UTC)
OCT = dt.datetime(2026, 10, 3, tzinfo=dt.UTC)
BAD = 101  # the record penalised: carol's, weight 0.3 of responses where carol has 0.6


def attribution(carol: int, dave: int, names_bad: bool) -> str:
    top = [{"id": 102, "contributor": carol, "weight": 0.2}]
    if names_bad:
        top.insert(0, {"id": BAD, "contributor": carol, "weight": 0.3})
    top.append({"id": 201, "contributor": dave, "weight": 0.25})
    return json.dumps(
        {
            "object": "attribution",
            "top_records": top,
            "contributors": [
                {"id": carol, "weight": 0.6, "weight_ppm": 600_000},
                {"id": dave, "weight": 0.4, "weight_ppm": 400_000},
            ],
        }
    )


def event(rid: str, payer: int, at: dt.datetime, attr: str | None) -> UsageRecord:
    return usage_event(
        rid, account_id=payer, started_at=at, adapter="a", prompt_tokens=777,
        completion_tokens=333, attribution=attr,
    )  # fmt: skip


async def paid_to(engine: AsyncEngine, ledger_id: int) -> dict[str, int]:
    async with driver(engine) as conn:
        rows = await conn.fetch(
            """SELECT p.event_id, x.amount FROM usage_postings p,
               unnest(p.payees, p.amounts) AS x(payee, amount) WHERE x.payee = $1""",
            ledger_id,
        )
    return {r["event_id"]: int(r["amount"]) for r in rows}


async def test_a_penalised_record_loses_exactly_its_part(engine: AsyncEngine) -> None:
    async with driver(engine) as conn:
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING name, id",
            ["own", "carol", "dave", "payer"],
        )
    ids = {r["name"]: r["id"] for r in rows}
    carol, dave, payer = ids["carol"], ids["dave"], ids["payer"]
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 3_000_000, SEP)
    directory = InMemoryAdapterDirectory({"a": AdapterInfo(ids["own"], {carol: 2, dave: 1})})
    worker = PostingWorker(engine, directory, UsageEventAttribution(engine))
    store = PostgresUsageStore(engine)
    hour = dt.timedelta(hours=1)
    first = [event(f"sep-{i}", payer, SEP + i * hour, attribution(carol, dave, True)) for i in range(5)]  # fmt: skip
    first += [event(f"oct-{i}", payer, OCT + i * hour, attribution(carol, dave, i % 3 != 0)) for i in range(30)]  # fmt: skip
    first += [event(f"base-{i}", payer, OCT + i * hour, None) for i in range(5)]  # baseline
    await store.insert_batch(first)
    await worker.drain()
    await PostgresPayouts(engine).close(dt.date(2026, 9, 1), wash=None)
    async with driver(engine) as conn:
        ledger = {
            r["owner_id"]: r["id"]
            for r in await conn.fetch(
                "SELECT owner_id, id FROM ledger_accounts WHERE kind = 'contributor'"
            )  # fmt: skip
        }
    before = await paid_to(engine, ledger[carol])
    dave_before = await paid_to(engine, ledger[dave])
    service = MeteringService(engine)
    carol_oct = {m.month: m.total_micros for m in (await service.earnings(carol)).months}

    penalty, reversed_ = await penalize_record(engine, BAD, carol, "copied from a textbook")
    named = [f"oct-{i}" for i in range(30) if i % 3 != 0]
    expected = sum(record_part(before[e], 300_000, 600_000) for e in named)
    assert expected > 0 and reversed_ == expected
    assert sum(before[e] // 2 for e in named) == expected  # 0.3 of carol's 0.6: half
    after = {m.month: m.total_micros for m in (await service.earnings(carol)).months}
    assert after["2026-10"] == carol_oct["2026-10"] - expected
    assert after["2026-09"] == carol_oct["2026-09"]  # a closed month never changes
    withheld = (await service.earnings(carol)).withheld
    assert [(w.month, w.reason) for w in withheld] == [
        ("2026-10", f"penalty reversal #{penalty} (record {BAD}): copied from a textbook")
    ]
    assert await paid_to(engine, ledger[dave]) == dave_before  # nobody else is touched
    with pytest.raises(LedgerError, match="already penalised"):
        await penalize_record(engine, BAD, carol, "again")

    # Later events: the record's part is withheld at posting, the rest of carol's share paid.
    later = [event(f"late-{i}", payer, OCT + (40 + i) * hour, attribution(carol, dave, i % 2 == 0)) for i in range(10)]  # fmt: skip
    await store.insert_batch(later)
    await worker.drain()
    async with driver(engine) as conn:
        system_withheld = await conn.fetchval(
            "SELECT id FROM ledger_accounts WHERE kind = 'withheld'"
        )
        rows = await conn.fetch(
            "SELECT event_id, payees, amounts FROM usage_postings WHERE event_id LIKE 'late-%'"
        )
    for r in rows:
        split = dict(zip(r["payees"], r["amounts"], strict=True))
        i = int(r["event_id"].split("-")[1])
        held = split.get(system_withheld, 0)
        full = split.get(ledger[carol], 0) + held
        assert held == (full * 300_000 // 600_000 if i % 2 == 0 else 0), r["event_id"]
    items = await service.earnings(carol)
    assert f"penalty (record {BAD}): copied from a textbook" in {w.reason for w in items.withheld}

    # An influence re-split of a penalised event keeps the record's part withheld.
    txn = await reattribute(engine, directory, "late-0", {carol: 1, dave: 1})
    assert txn is not None
    async with driver(engine) as conn:
        moves = await conn.fetch(
            """SELECT x.payee, sum(x.amount) AS amount FROM (
                   SELECT payees, amounts FROM usage_postings WHERE event_id = 'late-0'
                   UNION ALL SELECT payees, amounts FROM usage_adjustments WHERE event_id = 'late-0'
               ) s, unnest(s.payees, s.amounts) AS x(payee, amount) GROUP BY x.payee"""
        )
    now = {r["payee"]: int(r["amount"]) for r in moves}
    assert now[system_withheld] == (now[ledger[carol]] + now[system_withheld]) // 2
    assert await violations(engine) == []


async def test_the_cli_penalises_a_record_or_a_contributor(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    def royalty(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(app, [*args, "--database-url", database_url])
        return r.exit_code, r.stdout + (r.stderr if r.stderr_bytes else "")

    both = ("payouts", "penalize", "--contributor", "x", "--record", "1", "--reason", "r")
    assert (await asyncio.to_thread(royalty, *both))[0] == 2
    assert (await asyncio.to_thread(royalty, "payouts", "penalize", "--reason", "r"))[0] == 2
    code, out = await asyncio.to_thread(royalty, "payouts", "penalize", "--record", "999999", "--reason", "r")  # fmt: skip
    assert code == 1 and "no record 999999" in out
    # a real record (imported through the CLI): penalised once, with its contributor
    code, out = await asyncio.to_thread(royalty, "datanet", "create", "--name", "n", "--owner", "o")  # fmt: skip
    assert code == 0, out
    text = (
        "Braised leeks with thyme need a slow oven, a splash of white wine and patience; "
        "serve them warm beside crusty bread, a sharp mustard dressing and boiled eggs."
    )
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"text": text}) + "\n")
    code, out = await asyncio.to_thread(royalty, "datanet", "import", str(f), "--datanet", "n", "--contributor", "carol")  # fmt: skip
    assert code == 0 and "accepted=1" in out, out
    async with driver(engine) as conn:
        record, carol = await conn.fetchrow(
            "SELECT c.id, c.contributor_account_id FROM contributions c"
        )
    code, out = await asyncio.to_thread(royalty, "payouts", "penalize", "--record", str(record), "--reason", "plagiarised")  # fmt: skip
    assert code == 0 and out.startswith("record penalty 1: reversed 0.000000 credits"), out
    async with driver(engine) as conn:
        row = await conn.fetchrow("SELECT record_id, contributor_id, reason FROM record_penalties")
    assert tuple(row) == (record, carol, "plagiarised")
    code, out = await asyncio.to_thread(royalty, "payouts", "penalize", "--record", str(record), "--reason", "again")  # fmt: skip
    assert code == 1 and "already penalised" in out


async def test_two_penalised_records_in_one_response_each_lose_their_part(
    engine: AsyncEngine,
) -> None:
    """Each record's part is taken from what its contributor was paid before either moved."""
    async with driver(engine) as conn:
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING name, id",
            ["own", "carol", "dave", "payer"],
        )
    ids = {r["name"]: r["id"] for r in rows}
    carol, dave = ids["carol"], ids["dave"]
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 3_000_000, SEP)
    directory = InMemoryAdapterDirectory({"a": AdapterInfo(ids["own"], {carol: 2, dave: 1})})
    await penalize_record(engine, BAD, carol, "copied")
    await penalize_record(engine, 102, carol, "copied too")
    evs = [event(f"two-{i}", ids["payer"], OCT + i * dt.timedelta(hours=1), attribution(carol, dave, True)) for i in range(12)]  # fmt: skip
    await PostgresUsageStore(engine).insert_batch(evs)
    await PostingWorker(engine, directory, UsageEventAttribution(engine)).drain()
    async with driver(engine) as conn:
        withheld_id = await conn.fetchval("SELECT id FROM ledger_accounts WHERE kind = 'withheld'")
        carol_id = await conn.fetchval(
            "SELECT id FROM ledger_accounts WHERE kind = 'contributor' AND owner_id = $1", carol
        )
        postings = await conn.fetch("SELECT payees, amounts FROM usage_postings")
    for p in postings:
        split = dict(zip(p["payees"], p["amounts"], strict=True))
        held, kept = split[withheld_id], split[carol_id]
        full = held + kept
        assert held == full * 300_000 // 600_000 + full * 200_000 // 600_000, (full, held)
    reasons = {w.reason for w in (await MeteringService(engine).earnings(carol)).withheld}
    assert reasons == {
        f"penalty (record {BAD}): copied",
        "penalty (record 102): copied too",
    }
    assert await violations(engine) == []
