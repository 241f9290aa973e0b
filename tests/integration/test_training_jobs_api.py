"""Training jobs over HTTP and across processes, against real Postgres, with a stub trainer
(the real one is `test_adapter_api.py`'s): `POST /v1/adapters` queues a job that any gateway
reads, a restarted one too; an `Idempotency-Key` gives a retried request the same job; a job
that cannot be trained fails once with a readable error; a worker process killed with kill -9
mid-training loses nothing: its job is trained by another after the lease; `royalty training
status` counts the jobs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine
from support.app import app_over_postgres
from typer.testing import CliRunner

from attribution.lineage import RegisteredAdapter
from attribution.service import DatanetService
from attribution.training_jobs import (
    PostgresTrainingJobs,
    TrainingJob,
    TrainingPolicy,
    TrainingRequest,
)
from core.accounts import account_id
from gateway.auth import PostgresKeyStore
from gateway.container import Services
from metering.pg import driver
from royalty.workers.training import OnStep, TrainingWorker

pytestmark = pytest.mark.integration

BODY = {"datanet": "clauses", "name": "clauses", "owner": "builder", "steps": 3}


def fake_adapter(job: TrainingJob) -> RegisteredAdapter:
    r = job.request
    return RegisteredAdapter(
        id=1, name=r.adapter, base_model="royalty-tiny", base_weights_sha256="b" * 64,
        owner_account_id=7, owner=r.owner, datanet_id=1, datanet=r.datanet,
        snapshot_id="s" * 64, path=f"/adapters/{r.adapter}", weights_sha256="w" * 64,
        lineage_sha256="l" * 64, record_count=12, price_input_micros=None,
        price_output_micros=None, metadata={}, status="active",
        created_at="2026-12-08T00:00:00Z", created=1_796_688_000,
    )  # fmt: skip


def stub_trainer(engine: AsyncEngine) -> Callable[[TrainingJob, OnStep], Awaitable[Any]]:
    """Looks the datanet and snapshot up as the real trainer does (so a job that names what
    does not exist fails the same way), then 'trains' its steps."""

    async def train(job: TrainingJob, on_step: OnStep) -> RegisteredAdapter:
        datanets = DatanetService(engine)
        await datanets.get_datanet_by_name(job.request.datanet)
        if job.request.snapshot_id is not None:
            await datanets.get_snapshot(job.request.snapshot_id)
        for i in range(1, (job.request.steps or 5) + 1):
            on_step(i, 1.0 / i)
        return fake_adapter(job)

    return train


@contextlib.asynccontextmanager
async def gateway(database_url: str) -> AsyncIterator[AsyncTestClient[Any]]:
    async def wire(services: Services, engine: AsyncEngine) -> None:
        services.datanets = DatanetService(engine)
        services.training_jobs = PostgresTrainingJobs(engine)

    async with app_over_postgres(database_url, wire) as client:
        yield client


async def admin_key(engine: AsyncEngine) -> dict[str, str]:
    key, _ = await PostgresKeyStore(engine).create("root", frozenset({"admin"}), None, None)
    return {"Authorization": f"Bearer {key}"}


async def make_datanet(engine: AsyncEngine) -> None:
    owner = await account_id(engine, "owner")
    await DatanetService(engine).create_datanet("clauses", owner, "MIT")


async def test_any_gateway_reads_the_job_a_restarted_one_too(
    engine: AsyncEngine, database_url: str
) -> None:
    await make_datanet(engine)
    admin = await admin_key(engine)
    async with gateway(database_url) as a, gateway(database_url) as b:
        r = await a.post("/v1/adapters", json=BODY, headers=admin)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["object"] == "adapter.training_job" and job["status"] == "queued"
        assert (job["adapter"], job["datanet"], job["step"]) == ("clauses", "clauses", 0)
        assert isinstance(job["created"], int) and "Idempotent-Replayed" not in r.headers
        seen = (await b.get(f"/v1/adapters/jobs/{job['id']}", headers=admin)).json()
        assert seen == job, "the other gateway reads the same job"

        # A retried request with the same key gets the same job; another request, a 422.
        keyed = {**admin, "Idempotency-Key": "train-clauses-1"}
        first = await a.post("/v1/adapters", json=BODY, headers=keyed)
        again = await b.post("/v1/adapters", json=BODY, headers=keyed)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"] != job["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        other = await a.post("/v1/adapters", json={**BODY, "steps": 4}, headers=keyed)
        assert other.status_code == 422, other.text
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        bad_key = await a.post("/v1/adapters", json=BODY, headers={**admin, "Idempotency-Key": ""})
        assert bad_key.status_code == 400

        # Not found, whatever the id looks like; admins only.
        for missing in ("ftjob-0000000000000000", "ftjob-x", "x" * 300):
            r = await b.get(f"/v1/adapters/jobs/{missing}", headers=admin)
            assert r.status_code == 404, (missing, r.text)
        key, _ = await PostgresKeyStore(engine).create("c", frozenset({"inference"}), None, None)
        r = await b.get(
            f"/v1/adapters/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 403

    worker = TrainingWorker(PostgresTrainingJobs(engine), stub_trainer(engine), name="w")
    assert await worker.run_once() == "succeeded"
    async with gateway(database_url) as restarted:
        done = (await restarted.get(f"/v1/adapters/jobs/{job['id']}", headers=admin)).json()
    assert done["status"] == "succeeded" and done["step"] == 3 and done["loss"] == 0.3333
    assert done["result"]["id"] == "clauses" and done["result"]["object"] == "adapter"
    assert "error" not in done


async def test_a_job_that_cannot_be_trained_fails_once_with_its_error(
    engine: AsyncEngine, database_url: str
) -> None:
    await make_datanet(engine)
    admin = await admin_key(engine)
    async with gateway(database_url) as gw:
        # Well formed, so accepted; no such snapshot, which only training finds out.
        body = {**BODY, "snapshot": "0" * 64}
        job = (await gw.post("/v1/adapters", json=body, headers=admin)).json()
        worker = TrainingWorker(PostgresTrainingJobs(engine), stub_trainer(engine), name="w")
        assert await worker.run_once() == "failed"
        assert await worker.run_once() is None, "a permanent failure is not retried"
        failed = (await gw.get(f"/v1/adapters/jobs/{job['id']}", headers=admin)).json()
    assert failed["status"] == "failed" and failed["error"]["type"] == "NotFound"
    assert "snapshot" in failed["error"]["message"]
    async with driver(engine) as conn:
        assert await conn.fetchval("SELECT attempts FROM training_jobs") == 1


CHILD = """
import asyncio, os, time
from attribution.training_jobs import PostgresTrainingJobs, TrainingPolicy
from royalty.db import create_engine
from royalty.workers.training import TrainingWorker

async def train(job, on_step):
    def forever():
        step = 0
        while True:
            step += 1
            time.sleep(0.05)
            on_step(step, 1.0)
    await asyncio.to_thread(forever)

async def main():
    engine = create_engine(os.environ["DATABASE_URL"], pool_size=2)
    jobs = PostgresTrainingJobs(engine, TrainingPolicy(lease_s=1.0))
    await TrainingWorker(jobs, train, name="doomed", progress_every_s=0.1).run_once()

asyncio.run(main())
"""


async def test_a_worker_killed_mid_training_loses_nothing(
    engine: AsyncEngine, database_url: str
) -> None:
    await make_datanet(engine)
    jobs = PostgresTrainingJobs(engine, TrainingPolicy(lease_s=1.0))
    job = (await jobs.enqueue(TrainingRequest("clauses", "clauses", "builder"))).job
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, env={**os.environ, "DATABASE_URL": database_url},
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            seen = await jobs.get(job.id)
            assert seen is not None
            if seen.locked_by == "doomed" and seen.step > 0:
                break
            assert child.returncode is None, "the worker died by itself"
            assert time.monotonic() < deadline, "the worker never trained"
            await asyncio.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(child.wait(), 10) == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    seen = await jobs.get(job.id)
    assert seen is not None and seen.state == "running" and seen.locked_by == "doomed"

    survivor = TrainingWorker(jobs, stub_trainer(engine), name="survivor")
    deadline = time.monotonic() + 10
    while (outcome := await survivor.run_once()) is None:
        assert time.monotonic() < deadline, "the dead worker's lease never ran out"
        await asyncio.sleep(0.1)
    assert outcome == "succeeded"
    done = await jobs.get(job.id)
    assert done is not None and done.state == "succeeded" and done.attempts == 2
    assert done.result is not None and done.result.name == "clauses"


async def test_royalty_training_status_counts_the_jobs(
    engine: AsyncEngine, database_url: str
) -> None:
    from royalty.cli.training import training_app

    jobs = PostgresTrainingJobs(engine)
    for _ in range(2):
        await jobs.enqueue(TrainingRequest("clauses", "clauses", "builder"))
    result = await asyncio.to_thread(
        CliRunner().invoke, training_app, ["status", "--database-url", database_url],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("queued=2 running=0 succeeded=0 failed=0 oldest_queued=")
