"""Poison items against the real Postgres (issue 13): a usage record whose `model` holds a NUL
or is 9,000 random characters (the `usage_events_model_started` index refuses it: 54000), an
influence job with a NUL in its prompt or output, and a usage event whose charge overflows
`bigint` (22003). Each one used to stop its queue for good. Now each lands in `dead_letters`
exactly once, every other item of the same and of later batches is stored or posted, and a
replay after fixing the cause goes through."""

from __future__ import annotations

import datetime as dt
import random
import string
from pathlib import Path

import asyncpg
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event

from attribution.influence.queue import NewJob, PostgresInfluenceQueue
from core.deadletters import PostgresDeadLetterStore
from gateway.inference import CompletedResponse
from gateway.influence import InfluenceEnqueuer, replay_dead_letter
from metering.budgets.store import PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.book import PostgresLedger
from metering.ledger.posting import PostingWorker, discard_dead_letter, requeue_dead_letter
from metering.ledger.sources import InMemoryAdapterDirectory, NoAttribution
from metering.pg import driver
from metering.usage.log import UsageLog
from metering.usage.record import UsageRecord
from metering.usage.shipper import UsageShipper
from metering.usage.store import (
    INVALID_MODEL,
    PostgresUsageStore,
    decode_dead_letter,
)
from metering.usage.store import replay_dead_letter as replay_usage

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 10, 5, 12, 0, tzinfo=dt.UTC)
LONG_MODEL = "".join(random.Random(13).choices(string.ascii_letters + string.digits, k=9000))


def record(i: int, *, model: str | None = None, account_id: int = 1) -> UsageRecord:
    return usage_event(
        f"req-{i:05d}", account_id=account_id, started_at=T0 + dt.timedelta(seconds=i),
        adapter=None, base_model="tiny", model=model, prompt_tokens=100, completion_tokens=10,
    )  # fmt: skip


async def fetch(engine: AsyncEngine, sql: str, *args: object) -> list[asyncpg.Record]:
    async with driver(engine) as conn:
        return list(await conn.fetch(sql, *args))


async def event_places(engine: AsyncEngine) -> dict[str, int]:
    """How many places each usage event is in (posted, queued, held by a posting dead
    letter): the invariant is exactly one each."""
    rows = await fetch(
        engine,
        """
        SELECT e.request_id,
               (EXISTS (SELECT 1 FROM usage_postings p WHERE p.event_id = e.request_id))::int
             + (EXISTS (SELECT 1 FROM usage_unposted q WHERE q.event_id = e.request_id))::int
             + (EXISTS (SELECT 1 FROM dead_letters d WHERE d.queue = 'posting'
                        AND d.item_key = e.request_id AND d.state <> 'replayed'))::int AS n
        FROM usage_events e
        """,
    )
    return {r["request_id"]: r["n"] for r in rows}


async def ledger_ok(engine: AsyncEngine) -> None:
    assert set((await event_places(engine)).values()) <= {1}
    assert await violations(engine) == []


# --- usage ---------------------------------------------------------------------------------------
async def test_reproduce_a_nul_model_stops_every_later_record(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Without a dead-letter store: the defect as it was (retried whole, forever)."""
    async with await UsageLog.open(tmp_path) as log:
        await log.append_many([record(0), record(1, model="x\x00y"), record(2)])
        shipper = UsageShipper(log, PostgresUsageStore(engine), interval_s=0.01)
        assert not await shipper.flush(0.5)
        await log.append(record(3))
        assert not await shipper.flush(0.5)
        assert "CharacterNotInRepertoire" in (shipper.last_error or "")
    assert await PostgresUsageStore(engine).count() == 0


@pytest.mark.parametrize(
    ("bad_model", "sqlstate", "replayed_model"),
    [("x\x00y", "22021", "xy"), (LONG_MODEL, "54000", INVALID_MODEL)],
    ids=["nul", "9000-chars"],
)
async def test_a_usage_record_postgres_refuses_is_dead_lettered_once_and_replayable(
    engine: AsyncEngine, tmp_path: Path, bad_model: str, sqlstate: str, replayed_model: str
) -> None:
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 2_000_000, T0 - dt.timedelta(days=9))  # fmt: skip
    async with driver(engine) as conn:
        payer = await conn.fetchval("INSERT INTO accounts (name) VALUES ('payer') RETURNING id")
    records = [
        record(i, model=bad_model if i == 30 else None, account_id=payer) for i in range(200)
    ]
    store, dead = PostgresUsageStore(engine), PostgresDeadLetterStore(engine)
    async with await UsageLog.open(tmp_path / "log") as log:
        shipper = UsageShipper(log, store, batch_size=50, interval_s=0.01, dead_letters=dead)
        await log.append_many(records[:120])
        assert await shipper.flush(30)
        await log.append_many(records[120:])  # later batches: nothing in the way
        assert await shipper.flush(30)
    assert await store.count() == 199
    assert shipper.dead_lettered_total == 1 and shipper.shipped_total == 200

    # The same batch shipped again (a crash before the cursor write): nothing is added twice.
    async with await UsageLog.open(tmp_path / "again") as log:
        await log.append_many(records[:60])
        again = UsageShipper(log, store, batch_size=50, interval_s=0.01, dead_letters=dead)
        assert await again.flush(30)
    assert await store.count() == 199
    [letter] = await dead.list()
    assert (letter.queue, letter.item_key, letter.state) == ("usage", "req-00030", "dead")
    assert letter.sqlstate == sqlstate and letter.failures == 1
    assert decode_dead_letter(letter.payload) == records[30], "the exact record, NUL and all"
    assert "\x00" not in letter.error and len(letter.error) <= 4000
    assert await dead.pending() == {"usage": 1, "influence": 0, "posting": 0}

    poster = PostingWorker(engine, InMemoryAdapterDirectory(), NoAttribution())
    assert await poster.drain() == 199
    await ledger_ok(engine)

    stored = await replay_usage(engine, letter.id, "operator: model name cleaned")
    assert stored.model == replayed_model and stored.request_id == "req-00030"
    assert stored.prompt_tokens == records[30].prompt_tokens
    [row] = await fetch(engine, "SELECT model FROM usage_events WHERE request_id = 'req-00030'")
    assert row["model"] == replayed_model
    assert await poster.drain() == 1, "the replayed record is posted like any other"
    await ledger_ok(engine)
    after = await dead.get(letter.id)
    assert after is not None and after.state == "replayed"
    assert after.resolution == "operator: model name cleaned"
    with pytest.raises(LookupError):
        await replay_usage(engine, letter.id, "twice")
    assert await dead.pending() == {"usage": 0, "influence": 0, "posting": 0}


# --- influence -----------------------------------------------------------------------------------
def response(i: int, *, prompt: str = "question", output: str = "answer") -> CompletedResponse:
    return CompletedResponse(
        request_id=f"inf-{i:04d}", account_id=7, adapter="recipes", endpoint="chat.completions",
        prompt=[{"role": "user", "content": f"{prompt} {i}"}], output=f"{output} {i}",
        attribution={"snapshot_id": "s1", "contributors": [{"id": 3, "weight_ppm": 10**6}]},
        started_at=T0,
    )  # fmt: skip


async def test_an_influence_job_with_a_nul_is_dead_lettered_once_and_replayable(
    engine: AsyncEngine,
) -> None:
    queue, dead = PostgresInfluenceQueue(engine), PostgresDeadLetterStore(engine)
    # The defect first: the whole batch is refused, every time.
    stuck = InfluenceEnqueuer(queue, batch_size=25)
    stuck(response(1, prompt="x\x00y"))
    stuck(response(2))
    assert not await stuck.flush() and not await stuck.flush()
    assert (await queue.counts()).by_state["queued"] == 0

    enq = InfluenceEnqueuer(queue, batch_size=25, dead_letters=dead)
    for i in range(60):
        enq(response(i, prompt="x\x00y" if i == 7 else "question",
                     output="o\x00" if i == 41 else "answer"))  # fmt: skip
    assert await enq.flush() and len(enq) == 0
    for i in (7, 8):  # observed again: the letter is not written twice
        enq(response(i, prompt="x\x00y" if i == 7 else "question"))
    assert await enq.flush()
    assert (await queue.counts()).by_state["queued"] == 58
    letters = await dead.list(queue="influence")
    assert [(x.item_key, x.sqlstate) for x in letters] == [
        ("inf-0007", "22P05"),
        ("inf-0041", "22021"),
    ]
    job = msgspec.msgpack.decode(letters[0].payload, type=NewJob)
    assert job.prompt == [{"role": "user", "content": "x\x00y 7"}]
    assert enq.dead_lettered_total == 3, "handed over 3 times; the store kept 2"
    assert "INSERT" not in letters[0].error, "the driver's error, not the statement and its text"

    replayed = await replay_dead_letter(queue, dead, letters[0].id, "NUL stripped")
    assert replayed.prompt == [{"role": "user", "content": "xy 7"}]
    [row] = await fetch(
        engine, "SELECT prompt::text AS p FROM influence_jobs WHERE request_id = 'inf-0007'"
    )
    assert row["p"] == '[{"role": "user", "content": "xy 7"}]'
    after = await dead.get(letters[0].id)
    assert after is not None and after.state == "replayed" and after.payload == b"", (
        "text forgotten"
    )
    assert await dead.mark_discarded(letters[1].id, "test", forget_payload=True) is not None
    assert await dead.pending() == {"usage": 0, "influence": 0, "posting": 0}


# --- posting -------------------------------------------------------------------------------------
POISON_PRICE = 2**63 - 1  # micro-credits per million tokens: a typo'd price


async def test_a_usage_event_that_cannot_post_is_dead_lettered_and_the_rest_post(
    engine: AsyncEngine,
) -> None:
    catalog = PostgresCatalog(engine)
    await catalog.set_price("tiny", "", 1_000_000, 2_000_000, T0 - dt.timedelta(days=9))
    await catalog.set_price("tiny", "typo", POISON_PRICE, 0, T0 - dt.timedelta(days=9))
    async with driver(engine) as conn:
        payer = await conn.fetchval("INSERT INTO accounts (name) VALUES ('payer') RETURNING id")
    events = [record(i, account_id=payer) for i in range(250)]
    poison = usage_event(
        "req-00100x", account_id=payer, started_at=T0, adapter="typo", base_model="tiny",
        prompt_tokens=2**31 - 1, completion_tokens=0,
    )  # fmt: skip
    await PostgresUsageStore(engine).insert_batch([*events, poison])

    worker = PostingWorker(engine, InMemoryAdapterDirectory(), NoAttribution(), batch_size=64)
    assert await worker.drain(concurrency=2) == 250
    [(posted, charged)] = [
        tuple(r) for r in await fetch(engine, "SELECT count(*), sum(charge) FROM usage_postings")
    ]
    assert posted == 250 and charged == 250 * 120  # 100 in + 10 out at 1 and 2 credits per M
    assert await fetch(engine, "SELECT event_id FROM usage_unposted") == []
    letters = await PostgresDeadLetterStore(engine).list()
    assert [(x.queue, x.item_key, x.sqlstate) for x in letters] == [
        ("posting", "req-00100x", "22003")
    ]
    assert decode_dead_letter(letters[0].payload) == poison
    await ledger_ok(engine)
    assert (await event_places(engine))["req-00100x"] == 1

    # Posting it again (a crash, another worker) dead-letters nothing twice: it is not queued.
    assert await worker.drain() == 0
    assert len(await PostgresDeadLetterStore(engine).list()) == 1

    # Fixed (a corrected price version in force from before the event), then replayed.
    await catalog.set_price("tiny", "typo", 5_000_000, 0, T0 - dt.timedelta(days=1))
    assert await requeue_dead_letter(engine, letters[0].id, "price fixed") == "req-00100x"
    with pytest.raises(LookupError):
        await requeue_dead_letter(engine, letters[0].id, "twice")
    assert await worker.drain() == 1
    [row] = await fetch(engine, "SELECT charge FROM usage_postings WHERE event_id = 'req-00100x'")
    assert row["charge"] == ((2**31 - 1) * 5_000_000 + 500_000) // 1_000_000
    await ledger_ok(engine)
    assert set((await event_places(engine)).values()) == {1}


async def test_the_running_worker_goes_on_past_a_poison_event_and_discard_releases_it(
    engine: AsyncEngine,
) -> None:
    import asyncio

    catalog = PostgresCatalog(engine)
    await catalog.set_price("tiny", "", 1_000_000, 2_000_000, T0 - dt.timedelta(days=9))
    await catalog.set_price("tiny", "typo", POISON_PRICE, 0, T0 - dt.timedelta(days=9))
    async with driver(engine) as conn:
        payer = await conn.fetchval("INSERT INTO accounts (name) VALUES ('payer') RETURNING id")
    poison = usage_event(
        "req-poison", account_id=payer, started_at=T0, adapter="typo", base_model="tiny",
        prompt_tokens=2**31 - 1, completion_tokens=0,
    )  # fmt: skip
    # The gateway reserved credit for the request before serving it.
    ledger = PostgresLedger(engine)
    await ledger.top_up(payer, 100_000_000, "test credit")
    await PostgresBudgets(engine).reserve(payer, "req-poison", 7_000_000)
    assert (await ledger.balance("consumer", payer)).held == 7_000_000
    store = PostgresUsageStore(engine)
    await store.insert_batch([poison, *[record(i, account_id=payer) for i in range(40)]])
    worker = PostingWorker(engine, InMemoryAdapterDirectory(), NoAttribution(), batch_size=16)
    task = asyncio.create_task(worker.run(idle_s=0.05))
    try:
        await store.insert_batch([record(i, account_id=payer) for i in range(40, 90)])
        dead = PostgresDeadLetterStore(engine)
        for _ in range(400):
            [(n,)] = [tuple(r) for r in await fetch(engine, "SELECT count(*) FROM usage_postings")]
            if n == 90 and (await dead.pending())["posting"] == 1:
                break
            await asyncio.sleep(0.05)
        assert n == 90, "every event behind the poison one is posted"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [letter] = await PostgresDeadLetterStore(engine).list(state="dead")
    assert letter.item_key == "req-poison"
    assert (await ledger.balance("consumer", payer)).held == 7_000_000, "held until resolved"
    assert (
        await discard_dead_letter(engine, letter.id, "price typo; refunded by hand") == "req-poison"
    )
    assert (await ledger.balance("consumer", payer)).held == 0, "never charged: released"
    after = await PostgresDeadLetterStore(engine).get(letter.id)
    assert after is not None and after.state == "discarded"
    await ledger_ok(engine)
