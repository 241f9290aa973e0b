"""The influence worker against real Postgres and the real ledger (`FakeInfluence` scores):
two workers racing over 200 jobs process each exactly once; a usage event not posted yet is
waited for; a closed month expires the job and leaves the ledger as it was; the adjustment
moves money between contributors with every ledger invariant intact; no prompt or output text
is left once jobs finish; the month close runs the month's jobs first (or expires them with
--skip-influence); the attribution record shows the result. Crashes: test_influence_crashes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.influence_world import (
    OCTOBER,
    POLICY,
    FakeLineage,
    add_events,
    as_json,
    assert_no_text_left,
    earnings,
    fetch,
    inline_attribution,
    make_world,
    post_all,
)
from typer.testing import CliRunner

from attribution.influence.api import INFLUENCE_METHOD
from attribution.influence.queue import NewJob, PostgresInfluenceQueue, QueuePolicy
from metering.ledger.audit import violations
from metering.payouts.close import PostgresPayouts
from royalty.cli.main import app
from royalty.db import create_engine
from royalty.month_close import settle_month
from royalty.settings import Settings

pytestmark = pytest.mark.integration


async def test_two_workers_racing_over_200_jobs_process_each_exactly_once(
    engine: AsyncEngine, database_url: str
) -> None:
    w = await make_world(engine)
    ids = await add_events(w, 200)
    other = create_engine(database_url, pool_size=2)
    try:
        a = w.worker(name="worker-a", scorer=w.scorer(delay_s=0.001))
        b = w.worker(other, name="worker-b", scorer=w.scorer(delay_s=0.001))
        got_a, got_b = await asyncio.gather(a.run_due(), b.run_due())
    finally:
        await other.dispose()
    assert got_a["done"] + got_b["done"] == 200, (got_a, got_b)
    assert got_a["done"] > 0 and got_b["done"] > 0, "both workers took part"
    scored_a = [c[2] for c in a.scorer.calls]  # type: ignore[attr-defined]
    scored_b = [c[2] for c in b.scorer.calls]  # type: ignore[attr-defined]
    assert len(scored_a) + len(scored_b) == 200
    jobs = await fetch(engine, "SELECT request_id, state, attempts FROM influence_jobs")
    assert sorted(j["request_id"] for j in jobs) == ids
    assert {(j["state"], j["attempts"]) for j in jobs} == {("done", 1)}
    per_event = await fetch(
        engine, "SELECT event_id, count(*) AS n FROM usage_adjustments GROUP BY event_id"
    )
    assert max(r["n"] for r in per_event) == 1
    results = await fetch(engine, "SELECT request_id, adjustment_txn FROM influence_results")
    assert len(results) == 200
    assert {r["request_id"] for r in results if r["adjustment_txn"]} == {
        r["event_id"] for r in per_event
    }
    assert len(per_event) > 150, "most refinements move money away from the baseline"
    await assert_no_text_left(engine)
    assert await violations(engine) == []


async def test_the_adjustment_moves_money_to_the_influential_contributor(
    engine: AsyncEngine,
) -> None:
    w = await make_world(engine)
    (rid,) = await add_events(w, 1)  # event 0 quotes carol's first record
    before = await earnings(w)
    assert sum(before.values()) == 1000  # 2,000 micro-credit charge, data share 1,000
    assert await w.worker(name="w").run_once() == "done"
    after = await earnings(w)
    assert sum(after.values()) == sum(before.values()), "the data share is conserved"
    assert after["carol"] > before["carol"]
    assert after["dan"] + after["erin"] < before["dan"] + before["erin"]
    assert after["carol"] == 500, "capped at half the data share per contributor"
    (res,) = await fetch(engine, "SELECT * FROM influence_results WHERE request_id = $1", rid)
    contributors = as_json(res["contributors"])
    assert sum(c["weight_ppm"] for c in contributors) == 1_000_000
    assert res["adjustment_txn"] is not None and res["method"] == INFLUENCE_METHOD
    assert as_json(res["top_records"])[0]["id"] == w.record_for(0)
    (adj,) = await fetch(engine, "SELECT txn_id FROM usage_adjustments WHERE event_id = $1", rid)
    assert adj["txn_id"] == res["adjustment_txn"]
    await assert_no_text_left(engine)
    assert await violations(engine) == []


async def test_an_event_not_posted_yet_is_waited_for_then_adjusted(engine: AsyncEngine) -> None:
    w = await make_world(engine)
    (rid,) = await add_events(w, 1, post=False)
    worker = w.worker(name="w", not_posted_delay_s=1.0)
    assert await worker.run_once() == "postponed"
    (job,) = await fetch(engine, "SELECT * FROM influence_jobs WHERE request_id = $1", rid)
    assert job["state"] == "queued" and job["attempts"] == 0 and job["output"] is not None
    assert await worker.run_once() is None  # not due before the delay
    await post_all(w)
    await asyncio.sleep(1.05)
    assert await worker.run_once() == "done"
    assert len(worker.scorer.calls) == 1, "scored once: the retry reused the score"  # type: ignore[attr-defined]
    assert len(await fetch(engine, "SELECT 1 FROM usage_adjustments WHERE event_id = $1", rid)) == 1
    assert await violations(engine) == []


async def test_a_closed_month_expires_the_job_and_leaves_the_ledger_alone(
    engine: AsyncEngine,
) -> None:
    w = await make_world(engine)
    (rid,) = await add_events(w, 1)
    await PostgresPayouts(engine).close(OCTOBER, wash=None)
    entries = await fetch(engine, "SELECT id, account_id, amount FROM ledger_entries ORDER BY id")
    assert await w.worker(name="w").run_once() == "expired"
    (job,) = await fetch(engine, "SELECT * FROM influence_jobs WHERE request_id = $1", rid)
    assert job["state"] == "expired" and "closed month" in job["last_error"]
    assert job["prompt"] is None and job["output"] is None
    assert (
        await fetch(engine, "SELECT id, account_id, amount FROM ledger_entries ORDER BY id")
        == entries
    )
    assert await fetch(engine, "SELECT 1 FROM usage_adjustments") == []
    assert (await PostgresPayouts(engine).verify(OCTOBER))[1] == []
    assert await violations(engine) == []


async def test_no_index_scoring_failures_and_the_retention_sweep(engine: AsyncEngine) -> None:
    w = await make_world(engine)
    a, b, c = await add_events(w, 3)
    no_index = w.worker(name="w", lineage=FakeLineage(w.records, indexed=False))
    assert await no_index.run_once() == "skipped"
    view = await PostgresInfluenceQueue(engine).view(a)
    assert view is not None and view.state == "done" and view.note == "no influence index"
    assert view.result is None and not view.has_text

    policy = QueuePolicy(max_attempts=2, backoff_base_s=1.0, retention_s=0.3, **POLICY)
    scorer = w.scorer(fail_outputs=[w.output(1)])  # b's scoring always fails
    worker = w.worker(name="w", policy=policy, scorer=scorer)
    assert await worker.run_once() == "retry"  # b, first attempt
    assert await worker.run_once() == "done"  # c, while b backs off
    assert await worker.run_once() is None
    await asyncio.sleep(1.05)
    assert await worker.run_once() == "failed"  # b, second and last attempt
    jobs = {
        r["request_id"]: r
        for r in await fetch(
            engine, "SELECT request_id, state, last_error, output FROM influence_jobs"
        )  # fmt: skip
    }
    assert jobs[b]["state"] == "failed" and "asked to fail" in jobs[b]["last_error"]
    # A retention keeps the text a while after the job finished, then the sweep deletes it.
    assert jobs[b]["output"] is not None and jobs[c]["output"] is not None
    await asyncio.sleep(0.35)
    assert await worker.queue.sweep() == 2
    await assert_no_text_left(engine)
    assert await violations(engine) == []


# --- month close -----------------------------------------------------------------------------
async def test_the_close_settles_the_months_jobs_first(engine: AsyncEngine) -> None:
    w = await make_world(engine)
    ids = await add_events(w, 5)
    november = NewJob(
        request_id="nov-1", adapter="recipes", account_id=w.ids["payer"], prompt="p",
        output="o", attribution=None, created_at=dt.datetime(2026, 11, 3, tzinfo=dt.UTC),
    )  # fmt: skip
    await PostgresInfluenceQueue(engine, QueuePolicy(**POLICY)).enqueue([november])
    line = await settle_month(
        engine, Settings(), OCTOBER, worker=w.worker(name="closer"), timeout_s=20
    )
    assert "done=5" in line and "left" not in line, line
    states = {r["request_id"]: r["state"] for r in await fetch(
        engine, "SELECT request_id, state FROM influence_jobs")}  # fmt: skip
    assert all(states[i] == "done" for i in ids) and states["nov-1"] == "queued"
    closed = await PostgresPayouts(engine).close(OCTOBER, wash=None)
    assert closed.events == 5
    assert await violations(engine) == []
    # Nothing of October is waiting any more: a second settle has nothing to do.
    assert "no jobs" in await settle_month(engine, Settings(), OCTOBER)


async def test_close_with_skip_influence_expires_the_months_jobs(
    engine: AsyncEngine, database_url: str
) -> None:
    w = await make_world(engine)
    ids = await add_events(w, 3)

    def royalty(*args: str) -> Any:
        return CliRunner().invoke(
            app, [*args, "--database-url", database_url], catch_exceptions=False
        )

    r = await asyncio.to_thread(royalty, "payouts", "close", "--month", "2026-10",
                                "--skip-influence")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "3 jobs of 2026-10 or earlier expired" in r.stderr
    assert "2026-10 closed" in r.stdout
    rows = await fetch(engine, "SELECT state, last_error, output FROM influence_jobs")
    assert len(rows) == len(ids) and {r["state"] for r in rows} == {"expired"}
    assert all("--skip-influence" in r["last_error"] and r["output"] is None for r in rows)
    r = await asyncio.to_thread(royalty, "payouts", "close", "--month", "2026-10")
    assert r.exit_code == 0 and "already closed" in r.stdout
    r = await asyncio.to_thread(royalty, "influence", "status")
    assert r.exit_code == 0 and "expired=3" in r.stdout and "oldest_queued=-" in r.stdout
    assert await violations(engine) == []


# --- exposure ----------------------------------------------------------------------------------
async def test_the_attribution_record_shows_the_influence_job(
    engine: AsyncEngine, database_url: str
) -> None:
    from litestar.testing import AsyncTestClient
    from support.gateway_harness import make_harness

    from attribution.lineage import LineageService
    from gateway.app import create_app
    from gateway.auth import Authenticator, PostgresKeyStore
    from metering.usage.queries import UsageQueries

    w = await make_world(engine)
    done, waiting = await add_events(w, 2)
    assert await w.worker(name="w").run_once() == "done"
    keys = PostgresKeyStore(engine)
    payer, _ = await keys.create("payer", frozenset({"inference"}), None, None)
    admin, _ = await keys.create("ops", frozenset({"admin"}), None, None)
    stranger, _ = await keys.create("someone", frozenset({"inference"}), None, None)
    h = make_harness()
    app_engines: list[AsyncEngine] = []

    async def start() -> None:  # the app runs on its own event loop: its own engine
        e = create_engine(database_url, pool_size=2)
        app_engines.append(e)
        h.services.auth = Authenticator(PostgresKeyStore(e), ttl_s=0.0)
        h.services.usage_queries = UsageQueries(e)
        h.services.lineage = LineageService(e)

    async def stop() -> None:
        for e in app_engines:
            await e.dispose()

    app = create_app(h.services, on_startup=[start], on_shutdown=[stop])
    async with AsyncTestClient(app=app) as client:

        async def get(rid: str, key: str) -> Any:
            return await client.get(
                f"/v1/attributions/{rid}", headers={"Authorization": f"Bearer {key}"}
            )

        r = await get(done, payer)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["attribution"] == inline_attribution(w.ids)  # the inline one, as it was
        inf = body["influence"]
        assert inf["state"] == "done" and inf["method"] == INFLUENCE_METHOD
        assert inf["adjusted"] is True
        assert sum(c["weight_ppm"] for c in inf["contributors"]) == 1_000_000
        assert inf["top_records"][0]["id"] == w.record_for(0)
        assert "prompt" not in json.dumps(inf) and "smoky soup" not in r.text  # no text
        r = await get(waiting, admin)
        assert r.status_code == 200 and r.json()["influence"] == {
            "state": "queued", "method": None, "top_records": [], "contributors": []
        }  # fmt: skip
        assert (await get(done, stranger)).status_code == 404
