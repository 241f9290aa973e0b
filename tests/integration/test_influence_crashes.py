"""Crashes around the influence worker, against real Postgres: a worker process killed with
kill -9 while scoring, or after its adjustment posted but before the job was marked done,
loses nothing and the ledger sees one adjustment; a worker survives a PostgreSQL outage and
finishes the queue after it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.influence_world import (
    POLICY,
    add_events,
    earnings,
    fetch,
    make_world,
    spawn_worker,
    wait_for_row,
)

from attribution.influence.queue import QueuePolicy
from metering.ledger.audit import violations
from royalty.db import create_engine, migrate

if TYPE_CHECKING:
    from support.pg import PrivatePostgres

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["scoring", "after_adjust"])
async def test_a_worker_killed_mid_job_loses_nothing_and_adjusts_once(
    engine: AsyncEngine, database_url: str, mode: str
) -> None:
    w = await make_world(engine)
    (rid,) = await add_events(w, 1)
    before = await earnings(w)
    child = spawn_worker(w.config(database_url, mode=mode, lease_s=1.0))
    try:
        await wait_for_row(
            engine, "SELECT 1 FROM influence_jobs WHERE locked_by = 'doomed' AND state = 'running'"
        )
        if mode == "after_adjust":
            await wait_for_row(engine, "SELECT 1 FROM usage_adjustments WHERE event_id = $1", rid)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    (job,) = await fetch(engine, "SELECT * FROM influence_jobs WHERE request_id = $1", rid)
    assert job["state"] == "running" and job["locked_by"] == "doomed"
    assert job["output"] is not None, "the text is kept until the job is really done"

    survivor = w.worker(name="survivor", policy=QueuePolicy(lease_s=1.0, **POLICY))
    deadline = time.monotonic() + 10
    while (outcome := await survivor.run_once()) is None:
        assert time.monotonic() < deadline, "the dead worker's lease never ran out"
        await asyncio.sleep(0.1)
    assert outcome == "done"
    (job,) = await fetch(engine, "SELECT * FROM influence_jobs WHERE request_id = $1", rid)
    assert job["state"] == "done" and job["attempts"] == 2 and job["output"] is None
    adjustments = await fetch(
        engine, "SELECT txn_id FROM usage_adjustments WHERE event_id = $1", rid
    )
    assert len(adjustments) == 1, "exactly one adjustment, whoever posted it"
    after = await earnings(w)
    assert after["carol"] == 500 and sum(after.values()) == sum(before.values())
    assert await violations(engine) == []


async def test_a_worker_rides_out_a_postgres_outage(private_postgres: PrivatePostgres) -> None:
    pg = private_postgres
    engine = create_engine(pg.url, pool_size=2)
    await migrate(engine)
    try:
        w = await make_world(engine)
        ids = await add_events(w, 6)
        worker = w.worker(name="steady", policy=QueuePolicy(lease_s=2.0, **POLICY))
        await asyncio.to_thread(pg.stop, "immediate")
        task = asyncio.create_task(worker.run(idle_s=0.05, depth_every_s=0.1))
        await asyncio.sleep(1.0)
        assert not task.done(), "the worker died with the database"
        await asyncio.to_thread(pg.start)
        deadline = time.monotonic() + 30
        while True:
            try:
                rows = await fetch(engine, "SELECT state FROM influence_jobs")
            except Exception:  # the pool's first connections after the restart
                rows = []
            if rows and {r["state"] for r in rows} == {"done"}:
                break
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert len(rows) == len(ids)
        per_event = await fetch(
            engine, "SELECT event_id, count(*) AS n FROM usage_adjustments GROUP BY event_id"
        )
        assert per_event and max(r["n"] for r in per_event) == 1
        assert await violations(engine) == []
    finally:
        await engine.dispose()


async def test_a_slow_job_is_not_taken_from_a_live_worker(engine: AsyncEngine) -> None:
    w = await make_world(engine)
    (rid,) = await add_events(w, 1)
    policy = QueuePolicy(lease_s=0.6, **POLICY)
    slow = w.worker(name="slow", policy=policy, scorer=w.scorer(delay_s=2.0))  # > 3 leases
    thief = w.worker(name="thief", policy=policy)
    task = asyncio.create_task(slow.run_once())
    await wait_for_row(engine, "SELECT 1 FROM influence_jobs WHERE locked_by = 'slow'")
    stolen = []
    while not task.done():
        stolen.append(await thief.run_once())
        await asyncio.sleep(0.1)
    assert await task == "done"
    assert set(stolen) == {None}, "the heartbeat kept the lease"
    (job,) = await fetch(
        engine, "SELECT state, attempts FROM influence_jobs WHERE request_id = $1", rid
    )
    assert (job["state"], job["attempts"]) == ("done", 1)
