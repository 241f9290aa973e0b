"""A seeded, deterministic simulation of metering against real Postgres.

Random usage (duplicates, replays, late events for closed months, several price versions),
posting batches that crash after the COPY or are cancelled mid-flight, top-ups, a penalty
and month closes; after every step every ledger invariant (metering.ledger.audit) must hold, closed
months must be unchanged, and at the end every event is posted exactly once with the charge
an independent oracle computes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event

from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.book import PostgresLedger
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory, InMemoryAttributionSource
from metering.money import month_start
from metering.payouts.close import PostgresPayouts
from metering.payouts.holds import WashPolicy
from metering.pg import driver
from metering.usage.record import UsageRecord, prompt_digest
from metering.usage.store import PostgresUsageStore

pytestmark = pytest.mark.integration

OCT = dt.date(2026, 10, 1)
NOV = dt.date(2026, 11, 1)
DEC = dt.date(2026, 12, 1)
T_OCT = dt.datetime(2026, 10, 3, tzinfo=dt.UTC)
PRICE_CHANGE = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)


class Crash(Exception):
    pass


async def make_accounts(engine: AsyncEngine, names: list[str]) -> dict[str, int]:
    async with driver(engine) as conn:
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING name, id", names
        )
    return {r["name"]: r["id"] for r in rows}


def oracle_charge(ev: UsageRecord) -> int:
    """Independent of metering.pricing: the prices this test set, by hand."""
    if ev.status == "error":
        return 0
    if ev.adapter == "recipes":
        pin, pout = (
            (2_000_000, 6_000_000) if ev.started_at < PRICE_CHANGE else (3_000_000, 9_000_000)
        )
    else:  # base-model price, also the fallback for 'legal'
        pin, pout = 1_000_000, 2_000_000
    return (ev.prompt_tokens * pin + ev.completion_tokens * pout + 500_000) // 1_000_000


async def snapshot_closed(engine: AsyncEngine) -> list[tuple[object, ...]]:
    async with driver(engine) as conn:
        months = await conn.fetch("SELECT * FROM ledger_months ORDER BY month")
        stmts = await conn.fetch("SELECT * FROM statements ORDER BY month, payee")
        entries = await conn.fetch(
            "SELECT e.* FROM ledger_entries e JOIN ledger_months m USING (month) ORDER BY e.id"
        )
    return [tuple(r) for r in [*months, *stmts, *entries]]


async def test_seeded_simulation_keeps_every_invariant(engine: AsyncEngine) -> None:
    rng = random.Random(20261124)
    # Prompts from a small pool (its own stream, so the rest of the simulation is unchanged):
    # some payers repeat prompts often enough for the wash-traffic holds at close.
    prompts = random.Random(5)
    ids = await make_accounts(engine, ["alice", "bob", "carol", "dan", "erin", "owner", "eve"])
    # eve is a consumer, a contributor of recipes, and owns 'legal': self-dealing both ways.
    directory = InMemoryAdapterDirectory(
        {
            "recipes": AdapterInfo(ids["owner"], {ids["carol"]: 3, ids["dan"]: 5, ids["eve"]: 2}),
            "legal": AdapterInfo(ids["eve"], {ids["erin"]: 1, ids["dan"]: 1}),
        }
    )
    attribution = InMemoryAttributionSource()
    catalog = PostgresCatalog(engine)
    await catalog.set_price(
        "tiny", "", 1_000_000, 2_000_000, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    await catalog.set_price(
        "tiny", "recipes", 2_000_000, 6_000_000, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    await catalog.set_price("tiny", "recipes", 3_000_000, 9_000_000, PRICE_CHANGE)
    store = PostgresUsageStore(engine)
    worker = PostingWorker(engine, directory, attribution, batch_size=37)
    ledger = PostgresLedger(engine)
    payouts = PostgresPayouts(engine)
    payers = [ids["alice"], ids["bob"], ids["eve"]]

    shipped: dict[str, UsageRecord] = {}
    n = 0

    def new_event(when: dt.datetime) -> UsageRecord:
        nonlocal n
        n += 1
        adapter = rng.choice(["recipes", "legal", None])
        status = rng.choices(["ok", "client_cancelled", "error"], [8, 1, 1])[0]
        rid = f"ev-{n:05d}"
        if adapter == "recipes" and rng.random() < 0.2:
            attribution.by_event[rid] = {
                ids["carol"]: rng.randint(1, 9),
                ids["erin"]: rng.randint(1, 9),
            }
        # the draws in their old order, so the seeded run is the one it always was
        return usage_event(
            rid, account_id=rng.choice(payers), adapter=adapter, status=status,
            http_status=200 if status != "error" else 500,
            prompt_tokens=rng.randint(0, 3000), completion_tokens=rng.randint(0, 700),
            started_at=when, prompt_digest=prompt_digest(
                "hot" if prompts.random() < 0.5 else f"prompt {prompts.randint(0, 99)}"
            ),
        )  # fmt: skip

    closed_before: list[tuple[object, ...]] = []
    closed_oct = False
    after_close: set[str] = set()
    penalty_at = 0
    done: dict[str, int] = {}
    clock = T_OCT
    for step in range(90):
        action = rng.choices(
            ["ship", "post", "crash", "cancel", "topup", "replay"], [6, 5, 2, 2, 1, 2]
        )[0]
        done[action] = done.get(action, 0) + 1
        if step == 25:
            action = "close_oct"
        if step == 40:
            action = "penalty"
        if action == "ship":
            clock += dt.timedelta(hours=rng.randint(1, 60))
            batch = [new_event(clock) for _ in range(rng.randint(1, 60))]
            if step > 25:  # late events for the closed month
                batch += [
                    new_event(T_OCT + dt.timedelta(days=rng.randint(0, 27))) for _ in range(3)
                ]
            batch += rng.sample(batch, k=min(5, len(batch)))  # duplicates within a batch
            await store.insert_batch(batch)
            shipped.update({e.request_id: e for e in batch})
            if closed_oct:
                after_close.update(e.request_id for e in batch)
        elif action == "replay" and shipped:
            await store.insert_batch(rng.sample(list(shipped.values()), k=min(40, len(shipped))))
        elif action == "post":
            await worker.post_batch()
        elif action == "crash" and await worker.queue_depth():

            def boom() -> None:
                raise Crash

            worker.fail_after_copy = boom
            with pytest.raises(Crash):
                await worker.post_batch()
            worker.fail_after_copy = None
        elif action == "cancel":
            task = asyncio.create_task(worker.post_batch())
            await asyncio.sleep(rng.choice([0, 0.001, 0.005]))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        elif action == "topup":
            await ledger.top_up(rng.choice(payers), rng.randint(1, 10**9))
        elif action == "close_oct":
            await worker.drain()
            first = await payouts.close(OCT, WashPolicy(repeat_min_events=5))
            assert not first.already_closed and first.charges > 0
            again = await payouts.close(OCT)
            assert again.already_closed and again.root == first.root
            checked, bad = await payouts.verify(OCT)
            assert checked == first.statements and bad == []
            closed_oct = True
            async with driver(engine) as conn:  # the holds at close, each event held once
                held = await conn.fetch("SELECT heuristic, count(*) FROM held_events GROUP BY 1")
            assert {r[0] for r in held} >= {"repeated_prompt"}, held
        elif action == "penalty":
            await worker.drain()
            _, reversed_ = await ledger.penalize(
                ids["dan"], "", "copied records from another datanet"
            )
            assert reversed_ > 0
            penalty_at = n
        assert await violations(engine) == [], f"step {step} ({action})"
        now_closed = await snapshot_closed(engine)
        if closed_before:
            assert now_closed == closed_before, f"a closed month changed at step {step}"
        closed_before = now_closed

    await worker.drain()
    assert await violations(engine) == []
    assert (
        min(done.get(a, 0) for a in ("ship", "post", "crash", "cancel", "replay", "topup")) > 0
    ), done
    assert len(shipped) > 300
    async with driver(engine) as conn:
        posted = {
            r["event_id"]: r
            for r in await conn.fetch("SELECT event_id, charge, month, payees FROM usage_postings")
        }
        dan_ledger = await conn.fetchval(
            "SELECT id FROM ledger_accounts WHERE kind = 'contributor' AND owner_id = $1",
            ids["dan"],
        )
        reasons = [r[0] for r in await conn.fetch("SELECT DISTINCT reason FROM withheld_items")]
    assert set(posted) == set(shipped), "every shipped event posted exactly once"
    for rid, ev in shipped.items():
        assert posted[rid]["charge"] == oracle_charge(ev), rid
        own = month_start(ev.started_at)
        expected = NOV if own == OCT and rid in after_close else own
        assert posted[rid]["month"] == expected, rid
    assert any(month_start(shipped[r].started_at) == OCT for r in after_close), "late events"
    assert penalty_at
    # After the penalty dan earns nothing new; his shares went to withheld with the reason.
    assert any(r.startswith("penalty:") for r in reasons)
    assert any(r.startswith("penalty reversal") for r in reasons)
    assert any(r.startswith("self-dealing: the payer owns") for r in reasons)
    assert any(r.startswith("self-dealing: the payer is a data contributor") for r in reasons)
    before = [
        p for rid, p in posted.items() if int(rid[3:]) <= penalty_at and dan_ledger in p["payees"]
    ]
    after = [
        p for rid, p in posted.items() if int(rid[3:]) > penalty_at and dan_ledger in p["payees"]
    ]
    assert before and not after, "dan earned before the penalty, never after"
    closed = await payouts.close(NOV)
    assert (await payouts.verify(NOV))[1] == []
    assert closed.charges == closed.payouts + closed.fees + closed.withheld
    assert await violations(engine) == []
    assert (await payouts.close(DEC)).statements == 0  # an empty month closes to an empty root


async def test_ledger_rows_are_append_only_and_transactions_balanced(engine: AsyncEngine) -> None:
    ids = await make_accounts(engine, ["payer"])
    ledger = PostgresLedger(engine)
    txn = await ledger.top_up(ids["payer"], 5_000_000)
    async with driver(engine) as conn:
        for sql in (
            "UPDATE ledger_entries SET amount = amount + 1",
            "DELETE FROM ledger_entries",
            "DELETE FROM ledger_transactions",
            "TRUNCATE ledger_entries CASCADE",
        ):
            with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
                await conn.execute(sql)
        with pytest.raises(asyncpg.CheckViolationError, match="unbalanced"):
            async with conn.transaction():
                t = await conn.fetchval(
                    "INSERT INTO ledger_transactions (kind) VALUES ('topup') RETURNING id"
                )
                acct = await conn.fetchval("SELECT id FROM ledger_accounts WHERE kind = 'treasury'")
                await conn.execute(
                    "INSERT INTO ledger_entries (txn_id, account_id, month, amount) VALUES ($1, $2, $3, 7)",
                    t, acct, NOV,
                )  # fmt: skip
    back = await ledger.reverse(txn, "refund")
    assert back != txn
    assert (await ledger.balance("consumer", ids["payer"])).balance == 0
    with pytest.raises(Exception, match="already reversed"):
        await ledger.reverse(txn, "again")
    assert await violations(engine) == []


async def test_event_ids_and_adapter_names_with_copy_metacharacters_post_intact(
    engine: AsyncEngine,
) -> None:
    ids = await make_accounts(engine, ["odd"])
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 1_000_000, T_OCT)
    weird = ["back\\slash", "tab\there", "new\nline", "cr\rret", "\\N", "ünïcode ✓"]
    events = [
        usage_event(
            rid,
            account_id=ids["odd"],
            started_at=T_OCT,
            adapter=rid,
            model="m",
            prompt_tokens=1000,
            completion_tokens=1000,
        )
        for rid in weird
    ]
    await PostgresUsageStore(engine).insert_batch(events)
    assert await PostingWorker(engine, InMemoryAdapterDirectory()).drain() == len(weird)
    async with driver(engine) as conn:
        rows = await conn.fetch("SELECT event_id, adapter, charge FROM usage_postings")
    assert sorted((r["event_id"], r["adapter"], r["charge"]) for r in rows) == sorted(
        (w, w, 2000) for w in weird
    )
    assert await violations(engine) == []
