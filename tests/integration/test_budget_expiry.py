"""Credit reservations expire (issue 13, item 2): a request that never recorded usage (killed
gateway, failed usage write) must not hold its account's credit forever, the audit must say
so while it does, and the sweeper that releases it must never race the posting worker into
releasing one hold twice (or none): `held` stays the sum of the reservations left."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import signal
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine
from support.pg import free_port
from support.usage_events import usage_event
from typer.testing import CliRunner, Result

from metering.budgets.expiry import HoldSweeper, Swept
from metering.budgets.store import PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.book import PostgresLedger
from metering.ledger.posting import RELEASE_RESERVATIONS, PostingWorker
from metering.ledger.sources import InMemoryAdapterDirectory
from metering.pg import driver
from metering.usage.store import PostgresUsageStore
from royalty.cli.main import app

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


async def new_account(engine: AsyncEngine, name: str, credit: int) -> int:
    async with driver(engine) as conn:
        acct = int(
            await conn.fetchval("INSERT INTO accounts (name) VALUES ($1) RETURNING id", name)
        )
    await PostgresLedger(engine).top_up(acct, credit)
    return acct


async def expire(engine: AsyncEngine, *request_ids: str, ago_s: float = 600.0) -> None:
    """As if these reservations had been made long ago (their gateway died since)."""
    async with driver(engine) as conn:
        await conn.execute(
            "UPDATE budget_reservations SET created_at = now() - make_interval(secs => $2 + 900),"
            " expires_at = now() - make_interval(secs => $2) WHERE request_id = ANY($1::text[])",
            list(request_ids), ago_s,
        )  # fmt: skip


async def reservations(engine: AsyncEngine) -> dict[str, int]:
    async with driver(engine) as conn:
        rows = await conn.fetch("SELECT request_id, amount FROM budget_reservations")
    return {r[0]: int(r[1]) for r in rows}


async def ship(engine: AsyncEngine, account: int, *request_ids: str, tokens: int = 100) -> None:
    await PostgresUsageStore(engine).insert_batch([
        usage_event(rid, account_id=account, started_at=T0 + dt.timedelta(hours=1),
                    adapter=None, prompt_tokens=tokens, completion_tokens=0)
        for rid in request_ids
    ])  # fmt: skip


def expired_metric() -> float:
    return REGISTRY.get_sample_value("royalty_budget_holds_expired_total") or 0.0


async def test_a_leaked_hold_fails_the_audit_until_the_sweeper_releases_it(
    engine: AsyncEngine,
) -> None:
    acct = await new_account(engine, "buyer", 10_000)
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 1_000_000, T0)
    budgets = PostgresBudgets(engine)
    for rid, amount in (("died", 4_000), ("recorded", 3_000), ("fresh", 2_000)):
        await budgets.reserve(acct, rid, amount)
    await budgets.settle("recorded", 100)
    await ship(engine, acct, "recorded")  # its usage event waits in the posting queue
    await expire(engine, "died", "recorded")
    assert await budgets.available(acct) == 10_000 - 4_000 - 100 - 2_000
    # Before: nothing but posting ever released a hold, and the audit said nothing of this.
    broken = await violations(engine)
    assert len(broken) == 1 and broken[0].endswith(": 1 holding 4000 micro-credits"), broken

    before = expired_metric()
    assert await HoldSweeper(engine).sweep() == Swept(1, 4_000)
    assert expired_metric() - before == 1
    assert await reservations(engine) == {"recorded": 100, "fresh": 2_000}
    assert await budgets.available(acct) == 10_000 - 100 - 2_000
    assert await violations(engine) == []
    # the dead request's late settle, or release, finds nothing and changes nothing
    await budgets.settle("died", 3_999)
    await budgets.release("died")
    assert await budgets.available(acct) == 10_000 - 100 - 2_000
    # the expired hold whose usage is queued is the posting worker's to release
    await PostingWorker(engine, InMemoryAdapterDirectory()).drain()
    assert await reservations(engine) == {"fresh": 2_000}
    assert await HoldSweeper(engine).sweep() == Swept(0, 0)
    bal = await PostgresLedger(engine).balance("consumer", acct)
    assert (bal.balance, bal.held) == (10_000 - 100, 2_000)
    assert await violations(engine) == []


async def test_a_hold_expires_hold_s_after_it_was_made_single_or_grouped(
    engine: AsyncEngine,
) -> None:
    acct = await new_account(engine, "buyer", 1_000)
    quick = PostgresBudgets(engine, hold_s=0.3)
    await quick.reserve(acct, "one", 10)
    assert await quick.reserve_many([(acct, "two", 20), (acct, "three", 30)]) == {"two", "three"}
    await PostgresBudgets(engine).reserve(acct, "long", 40)  # the default: 15 minutes
    async with driver(engine) as conn:
        holds = dict(
            await conn.fetch(
                "SELECT request_id, extract(epoch FROM expires_at - created_at)::float8 "
                "FROM budget_reservations"
            )
        )
    assert holds == pytest.approx({"one": 0.3, "two": 0.3, "three": 0.3, "long": 900.0}, abs=0.05)
    assert await HoldSweeper(engine).sweep() == Swept(0, 0)  # nothing expired yet
    await asyncio.sleep(0.4)
    assert await HoldSweeper(engine, batch_size=2).sweep() == Swept(3, 60)
    assert await quick.available(acct) == 1_000 - 40
    assert await violations(engine) == []
    with pytest.raises(ValueError):
        PostgresBudgets(engine, hold_s=0)


async def test_posting_worker_mid_transaction_wins_and_the_sweeper_releases_nothing_twice(
    engine: AsyncEngine,
) -> None:
    """The posting worker has locked the account and deleted the hold, not yet committed:
    the sweeper waits for the account, then finds the hold gone. And the other way round:
    a hold the sweeper released is not released again when its late event posts."""
    acct = await new_account(engine, "buyer", 10_000)
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 1_000_000, T0)
    budgets = PostgresBudgets(engine)
    await budgets.reserve(acct, "posting", 1_000)
    await budgets.reserve(acct, "late", 2_000)
    await expire(engine, "posting", "late")
    async with driver(engine) as poster, poster.transaction():
        await poster.execute(
            "SELECT 1 FROM ledger_accounts WHERE kind = 'consumer' AND owner_id = $1 FOR UPDATE",
            acct,
        )
        await poster.execute(RELEASE_RESERVATIONS, ["posting"])
        sweep = asyncio.ensure_future(HoldSweeper(engine).sweep())
        await asyncio.sleep(0.3)
        assert not sweep.done()  # waits for the account, in the posting worker's lock order
    # committed: the sweeper sees "posting" gone, releases only "late"
    assert await asyncio.wait_for(sweep, 5) == Swept(1, 2_000)
    bal = await PostgresLedger(engine).balance("consumer", acct)
    assert bal.held == 0
    # "late" did run after all: its usage event ships and posts, charging in full
    await ship(engine, acct, "late", tokens=1_500)
    await PostingWorker(engine, InMemoryAdapterDirectory()).drain()
    bal = await PostgresLedger(engine).balance("consumer", acct)
    assert (bal.balance, bal.held) == (10_000 - 1_500, 0)
    assert await violations(engine) == []


async def test_sweeper_and_posting_worker_racing_over_many_holds_keep_held_exact(
    engine: AsyncEngine, database_url: str
) -> None:
    """Every hold expired; half of the requests' usage events ship while a posting worker and
    two sweepers (another process's pool too) run. Every hold is released exactly once: none
    is left, `held` is 0, the balance lost exactly the posted charges, and the audit holds."""
    from royalty.db import create_engine

    accounts = [await new_account(engine, f"c{i}", 10**9) for i in range(3)]
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 1_000_000, T0)
    budgets = PostgresBudgets(engine, hold_s=0.05)
    rng = random.Random(5)
    owner = {f"r{i:03d}": accounts[i % 3] for i in range(240)}
    amounts = {rid: rng.randint(100, 5_000) for rid in owner}
    for rid, acct in owner.items():
        await budgets.reserve(acct, rid, amounts[rid])
    await asyncio.sleep(0.1)
    shipped = [rid for rid in owner if rng.random() < 0.5]
    other = create_engine(database_url, pool_size=4)
    try:
        sweepers = [HoldSweeper(engine, batch_size=7), HoldSweeper(other, batch_size=11)]
        poster = PostingWorker(other, InMemoryAdapterDirectory(), batch_size=13)
        done = asyncio.Event()
        swept: list[Swept] = []

        async def shipper() -> None:
            for i in range(0, len(shipped), 9):
                for acct in accounts:
                    batch = [r for r in shipped[i : i + 9] if owner[r] == acct]
                    await ship(engine, acct, *batch, tokens=50)
                await asyncio.sleep(0.005)
            done.set()

        async def sweeping(s: HoldSweeper) -> None:
            while not done.is_set():
                swept.append(await s.sweep())
                await asyncio.sleep(0)

        async def posting() -> None:
            while not done.is_set():
                await poster.post_batch()
                await asyncio.sleep(0)

        await asyncio.wait_for(
            asyncio.gather(shipper(), posting(), *(sweeping(s) for s in sweepers)), 60
        )
        await poster.drain()
        swept.append(await sweepers[0].sweep())
    finally:
        await other.dispose()
    assert await reservations(engine) == {}
    released = sum(s.amount for s in swept)
    # what the sweepers released plus what posting released is every hold, once
    assert 0 < released < sum(amounts.values())
    for acct in accounts:
        bal = await PostgresLedger(engine).balance("consumer", acct)
        posted = sum(50 for r in shipped if owner[r] == acct)
        assert (bal.balance, bal.held) == (10**9 - posted, 0)
    assert await violations(engine) == []


async def test_one_inconsistent_account_does_not_stop_the_others_release(
    engine: AsyncEngine,
) -> None:
    """An account whose `held` no longer covers its reservations (a bug, a manual edit) makes
    releasing its holds violate `held >= 0`: the sweep sets it aside and releases the rest,
    every time, instead of failing on it forever."""
    accounts = [await new_account(engine, n, 10_000) for n in ("a", "bad", "c")]
    budgets = PostgresBudgets(engine)
    for i, acct in enumerate(accounts):
        await budgets.reserve(acct, f"died-{i}", 1_000 + i)
    await expire(engine, "died-0", "died-1", "died-2")
    async with driver(engine) as conn:
        await conn.execute(
            "UPDATE ledger_accounts SET held = 0 WHERE kind = 'consumer' AND owner_id = $1",
            accounts[1],
        )
    with pytest.raises(asyncpg.CheckViolationError):  # one batch: all or nothing
        await HoldSweeper(engine).sweep_batch()
    assert await HoldSweeper(engine).sweep() == Swept(2, 1_000 + 1_002)
    assert await reservations(engine) == {"died-1": 1_001}
    assert await HoldSweeper(engine).sweep() == Swept(0, 0)  # next period: no error either
    broken = await violations(engine)
    assert any(b.startswith("held credit differs from open reservations: 1") for b in broken)
    assert any(b.endswith(": 1 holding 1001 micro-credits") for b in broken)


async def royalty(database_url: str, *args: str) -> Result:
    # The CLI runs its own event loop: give it a thread.
    return await asyncio.to_thread(
        CliRunner().invoke, app, [*args, "--database-url", database_url], catch_exceptions=False
    )


async def test_ledger_check_names_the_leak_and_sweep_releases_it(
    engine: AsyncEngine, database_url: str
) -> None:
    acct = await new_account(engine, "buyer", 5_000_000)
    await PostgresBudgets(engine).reserve(acct, "died", 1_250_000)
    await expire(engine, "died")
    r = await royalty(database_url, "ledger", "check")
    assert r.exit_code == 1 and "1 holding 1250000 micro-credits" in r.output
    r = await royalty(database_url, "ledger", "sweep")
    assert r.exit_code == 0 and r.stdout == "released 1 expired holds (1.250000 credits)\n"
    r = await royalty(database_url, "ledger", "check")
    assert r.exit_code == 0 and r.stdout == "ledger ok\n"


async def test_the_ledger_worker_sweeps_on_its_period_and_counts_it(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    acct = await new_account(engine, "buyer", 10_000)
    await PostgresBudgets(engine).reserve(acct, "died", 7_000)
    await expire(engine, "died")
    port = free_port()
    log = (tmp_path / "worker.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("royalty")), "ledger", "worker",
        "--database-url", database_url, "--idle", "0.2", "--sweep-every", "0.3",
        f"--metrics-port={port}", "--metrics-host=127.0.0.1",
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        swept = None
        while time.monotonic() < deadline and not swept:
            await asyncio.sleep(0.3)
            try:
                swept = await asyncio.to_thread(scrape, port, "royalty_budget_holds_expired_total")
            except OSError:
                continue  # not listening yet
        assert swept == 1
        assert await reservations(engine) == {}
        assert await PostgresBudgets(engine).available(acct) == 10_000
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()


def scrape(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    return None
