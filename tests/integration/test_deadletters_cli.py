"""`royalty deadletters list|show|replay|discard` against real Postgres: an operator finds the
items no store would take, reads them, replays one of each queue after fixing it, discards
another, and cannot resolve anything twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event
from typer.testing import CliRunner, Result

from attribution.influence.queue import PostgresInfluenceQueue
from core.deadletters import PostgresDeadLetterStore
from gateway.inference import CompletedResponse
from gateway.influence import InfluenceEnqueuer
from metering.catalog import PostgresCatalog
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import InMemoryAdapterDirectory, NoAttribution
from metering.pg import driver
from metering.usage.log import UsageLog
from metering.usage.shipper import UsageShipper
from metering.usage.store import PostgresUsageStore
from royalty.cli.main import app

pytestmark = pytest.mark.integration
T0 = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)


async def royalty(database_url: str, *args: str) -> Result:
    # The CLI runs its own event loop: give it a thread.
    return await asyncio.to_thread(
        CliRunner().invoke, app, [*args, "--database-url", database_url], catch_exceptions=False
    )


def lines(result: Result) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


async def test_operators_list_show_replay_and_discard(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    catalog = PostgresCatalog(engine)
    await catalog.set_price("tiny", "", 1_000_000, 2_000_000, T0 - dt.timedelta(days=9))
    await catalog.set_price("tiny", "typo", 2**63 - 1, 0, T0 - dt.timedelta(days=9))
    async with driver(engine) as conn:
        payer = await conn.fetchval("INSERT INTO accounts (name) VALUES ('payer') RETURNING id")

    def event(rid: str, **kw: object) -> object:
        return usage_event(rid, account_id=payer, started_at=T0, adapter=None,
                           prompt_tokens=10, completion_tokens=1, **kw)  # type: ignore[arg-type]  # fmt: skip

    # usage: a NUL in the model name (shipped through the log, as the gateway does)
    dead = PostgresDeadLetterStore(engine)
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many([event("u-1"), event("u-nul", model="x\x00y"), event("u-2")])  # type: ignore[list-item]
        shipper = UsageShipper(log, PostgresUsageStore(engine), dead_letters=dead)
        assert await shipper.flush(30)
    # posting: a charge that overflows bigint (a typo'd price)
    await PostgresUsageStore(engine).insert_batch([
        usage_event("p-typo", account_id=payer, started_at=T0, adapter="typo",
                    prompt_tokens=2**31 - 1, completion_tokens=0),
    ])  # fmt: skip
    poster = PostingWorker(engine, InMemoryAdapterDirectory(), NoAttribution())
    assert await poster.drain() == 2
    # influence: a NUL in the output
    enq = InfluenceEnqueuer(PostgresInfluenceQueue(engine), dead_letters=dead)
    enq(CompletedResponse(
        request_id="i-nul", account_id=payer, adapter="recipes", endpoint="completions",
        prompt="hello", output="bad\x00output", attribution=None, started_at=T0,
    ))  # fmt: skip
    assert await enq.flush()

    r = await royalty(database_url, "deadletters", "list")
    assert r.exit_code == 0, r.output
    listed = lines(r)
    assert [(x["queue"], x["item_key"], x["state"]) for x in listed] == [
        ("usage", "u-nul", "dead"), ("posting", "p-typo", "dead"), ("influence", "i-nul", "dead"),
    ]  # fmt: skip
    ids = {str(x["queue"]): str(x["id"]) for x in listed}
    assert {x["sqlstate"] for x in listed} == {"22021", "22003"}
    r = await royalty(database_url, "deadletters", "list", "--queue", "posting", "--state", "dead")
    assert [x["item_key"] for x in lines(r)] == ["p-typo"]
    r = await royalty(database_url, "deadletters", "list", "--queue", "nope")
    assert r.exit_code == 2

    r = await royalty(database_url, "deadletters", "show", ids["usage"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["payload"]["model"] == "x\x00y" and shown["payload"]["request_id"] == "u-nul"
    assert "CharacterNotInRepertoire" in shown["error"]
    r = await royalty(database_url, "deadletters", "show", ids["influence"])
    assert json.loads(r.stdout)["payload"]["output"] == "bad\x00output"
    assert (await royalty(database_url, "deadletters", "show", "999999")).exit_code == 1

    # usage: replayed with the NUL stripped, then posted
    r = await royalty(database_url, "deadletters", "replay", ids["usage"], "--note", "NUL")
    assert r.exit_code == 0, r.output
    assert "u-nul" in r.stdout and "'xy'" in r.stdout
    assert await poster.drain() == 1
    # influence: queued again, clean
    r = await royalty(database_url, "deadletters", "replay", ids["influence"])
    assert r.exit_code == 0 and "i-nul" in r.stdout
    async with driver(engine) as conn:
        assert (
            await conn.fetchval("SELECT output FROM influence_jobs WHERE request_id = 'i-nul'")
            == "badoutput"
        )
    # posting: discarded with a reason (never charged)
    r = await royalty(database_url, "deadletters", "discard", ids["posting"], "--reason", "typo")
    assert r.exit_code == 0 and r.stdout == f"discarded {ids['posting']}\n"

    # Nothing is resolved twice.
    for args in (("replay", ids["usage"]), ("discard", ids["posting"], "--reason", "again"),
                 ("replay", ids["posting"])):  # fmt: skip
        r = await royalty(database_url, "deadletters", *args)
        assert r.exit_code == 1, (args, r.output)
    r = await royalty(database_url, "deadletters", "list", "--state", "dead")
    assert r.exit_code == 0 and r.stdout == ""
    r = await royalty(database_url, "deadletters", "list")
    assert [x["state"] for x in lines(r)] == ["replayed", "discarded", "replayed"]
    assert [x["resolution"] for x in lines(r)] == ["NUL", "typo", ""]
    async with driver(engine) as conn:
        assert await conn.fetchval("SELECT count(*) FROM usage_postings") == 3


async def test_the_ledger_worker_serves_the_dead_letter_gauge_the_alert_reads(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    """`royalty ledger worker --metrics-port` (what deploy/ runs and Prometheus scrapes) posts
    past a poison event and reports it in `royalty_dead_letters_pending{queue="posting"}`."""
    import signal
    import sys
    import time
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    from support.pg import free_port

    catalog = PostgresCatalog(engine)
    await catalog.set_price("tiny", "", 1_000_000, 2_000_000, T0 - dt.timedelta(days=9))
    await catalog.set_price("tiny", "typo", 2**63 - 1, 0, T0 - dt.timedelta(days=9))
    async with driver(engine) as conn:
        payer = await conn.fetchval("INSERT INTO accounts (name) VALUES ('payer') RETURNING id")
    await PostgresUsageStore(engine).insert_batch([
        *[usage_event(f"w-{i}", account_id=payer, started_at=T0, adapter=None,
                      prompt_tokens=10, completion_tokens=1) for i in range(30)],
        usage_event("w-typo", account_id=payer, started_at=T0, adapter="typo",
                    prompt_tokens=2**31 - 1, completion_tokens=0),
    ])  # fmt: skip

    def pending() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {
            s.labels["queue"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "royalty_dead_letters_pending"
        }

    port = free_port()
    royalty_bin = Path(sys.executable).with_name("royalty")
    log = (tmp_path / "worker.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(royalty_bin), "ledger", "worker", "--database-url", database_url, "--idle", "0.2",
        f"--metrics-port={port}", "--metrics-host=127.0.0.1", stdout=log, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            async with driver(engine) as conn:
                posted = await conn.fetchval("SELECT count(*) FROM usage_postings")
            if posted < 30:
                continue
            try:
                seen = await asyncio.to_thread(pending)
            except OSError:
                continue
            if seen.get("posting") == 1:
                break
        assert posted == 30, "every event behind the poison one posted"
        assert seen == {"usage": 0, "influence": 0, "posting": 1}, seen
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()
