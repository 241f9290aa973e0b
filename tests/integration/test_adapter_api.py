"""Adapter routes over HTTP against a real PostgreSQL: an admin trains an adapter through the
API (a queued job, trained by a training worker with the real model factory on a tiny base),
the registry sync serves it without a restart (within its ~1 s poll), and the lineage routes
answer with exactly the snapshot's contributors; scopes and bad input are refused in OpenAI's
error shape."""

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
from support.openai_schema import assert_conforms

from attribution.lineage import LineageService
from attribution.service import DatanetService
from attribution.training_jobs import PostgresTrainingJobs, TrainingRequest
from factory.build import DemoModels, FactoryConfig, build_demo_models, demo_contributions
from gateway.auth import PostgresKeyStore
from gateway.container import Services
from royalty.adapter_sync import AdapterSync
from royalty.workers.training import TrainingWorker, snapshot_trainer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> DemoModels:
    return build_demo_models(
        tmp_path_factory.mktemp("models"), config=FactoryConfig.tiny(), progress=False
    )


class Api:
    def __init__(self, client: AsyncTestClient[Any], keys: PostgresKeyStore) -> None:
        self.client = client
        self.keys = keys

    async def key(self, account: str, *scopes: str) -> dict[str, str]:
        k, _ = await self.keys.create(account, frozenset(scopes), None, None)
        return {"Authorization": f"Bearer {k}"}


@pytest.fixture
async def api(
    engine: AsyncEngine, database_url: str, tiny_base: DemoModels, tmp_path: Path
) -> AsyncIterator[Api]:
    async def wire(services: Services, app_engine: AsyncEngine) -> Callable[[], Awaitable[None]]:
        services.datanets = DatanetService(app_engine)
        services.lineage = LineageService(app_engine)
        services.training_jobs = PostgresTrainingJobs(app_engine)
        sync = AdapterSync(  # the default poll: what `royalty up` runs
            services.lineage,
            services.registry,
            "royalty-tiny",
            tiny_base.manifest["base"]["weights_sha256"],
        )
        await sync.sync_once()
        sync.start()
        # The training worker: a process of its own under `royalty up`; here a task.
        trainer = snapshot_trainer(app_engine, tiny_base, tmp_path / "adapters")
        worker = TrainingWorker(
            PostgresTrainingJobs(app_engine), trainer, name="test", progress_every_s=0.2
        )
        task = asyncio.create_task(worker.run(idle_s=0.1))

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await sync.stop()

        return stop

    async with app_over_postgres(database_url, wire) as client:
        yield Api(client, PostgresKeyStore(engine))


async def _published_datanet(api: Api) -> tuple[int, dict[str, str], dict[str, str]]:
    cur = await api.key("owner", "curator")
    r = await api.client.post(
        "/v1/datanets", json={"name": "clauses", "licence": "MIT"}, headers=cur
    )
    did = int(r.json()["id"])
    ana, ben = await api.key("ana", "contributor"), await api.key("ben", "contributor")
    records = demo_contributions("legal", FactoryConfig.tiny())
    for hdr, part in ((ana, records[0::3]), (ben, records[1::3] + records[2::3])):
        body = "\n".join(__import__("json").dumps(r) for r in part)
        r = await api.client.post(
            f"/v1/datanets/{did}/records/bulk", content=body.encode(),
            headers={**hdr, "Content-Type": "application/x-ndjson"},
        )  # fmt: skip
        assert r.status_code in (200, 201), r.text
    r = await api.client.post(f"/v1/datanets/{did}/snapshots", headers=cur)
    assert r.status_code in (200, 201), r.text
    return did, ana, ben


async def _finished(api: Api, job: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """The job once its worker is done with it (polled as a client would)."""
    for _ in range(1200):
        job = (await api.client.get(f"/v1/adapters/jobs/{job['id']}", headers=headers)).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"the job never finished: {job}")


async def test_admin_trains_through_the_api_and_it_is_served(api: Api) -> None:
    _, ana, ben = await _published_datanet(api)
    admin = await api.key("root", "admin")
    body = {"datanet": "clauses", "name": "clauses", "owner": "builder", "steps": 20}

    # Only admins train; bad bodies name the field.
    r = await api.client.post("/v1/adapters", json=body, headers=ana)
    assert r.status_code == 403 and assert_conforms(r.json(), "ErrorResponse") is None
    r = await api.client.post("/v1/adapters", json={**body, "steps": 0}, headers=admin)
    assert r.status_code == 400 and r.json()["error"]["param"] == "steps"
    r = await api.client.post("/v1/adapters", json={"datanet": "clauses"}, headers=admin)
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"

    r = await api.client.post("/v1/adapters", json=body, headers=admin)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and r.json()["step"] == 0
    job = await _finished(api, r.json(), admin)
    assert job["status"] == "succeeded", job
    assert job["step"] == 20 and job["result"]["id"] == "clauses"
    registered = time.monotonic()

    # Served without a restart, within the registry sync's poll (1 s): /v1/models lists it,
    # a completion through it works.
    inf = await api.key("consumer", "inference")
    for _ in range(100):
        models = (await api.client.get("/v1/models", headers=inf)).json()["data"]
        if "clauses" in {m["id"] for m in models}:
            break
        await asyncio.sleep(0.05)
    served_after = time.monotonic() - registered
    print(f"adapter served {served_after:.2f}s after its job succeeded")
    assert served_after < 5.0, "not served within a few of the sync's 1 s polls"
    r = await api.client.post(
        "/v1/completions", json={"model": "clauses", "prompt": "The", "max_tokens": 4}, headers=inf
    )
    assert r.status_code == 200 and r.json()["model"] == "clauses", r.text

    # Lineage: contributors and counts; records paged; the contributor's view.
    lin = (await api.client.get("/v1/adapters/clauses/lineage", headers=inf)).json()
    counts = {c["account"]: c["records"] for c in lin["contributors"]}
    assert set(counts) == {"ana", "ben"} and counts["ben"] > counts["ana"] > 0
    assert sum(counts.values()) == lin["record_count"] == lin["snapshot"]["record_count"]
    assert lin["owner"] == "builder" and lin["datanet"]["name"] == "clauses"
    page = (await api.client.get("/v1/adapters/clauses/records?limit=5", headers=inf)).json()
    assert len(page["data"]) == 5 and page["next_after"] == 5
    rest = await api.client.get("/v1/adapters/clauses/records?after=5&limit=10000", headers=inf)
    assert len(page["data"]) + len(rest.json()["data"]) == lin["record_count"]
    assert rest.json()["next_after"] is None
    r = await api.client.get("/v1/adapters/clauses/records?limit=0", headers=inf)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    mine = (await api.client.get("/v1/me/adapters", headers=ben)).json()["data"]
    assert [(m["adapter"], m["records"]) for m in mine] == [("clauses", counts["ben"])]
    assert (await api.client.get("/v1/me/adapters", headers=inf)).json()["data"] == []

    # A second job on the same name conflicts (the job reports it), unless replacing.
    r = await api.client.post("/v1/adapters", json={**body, "steps": 21}, headers=admin)
    job = await _finished(api, r.json(), admin)
    assert job["status"] == "failed" and job["error"]["type"] == "Conflict", job


async def test_lineage_routes_need_a_key_and_a_known_adapter(api: Api) -> None:
    r = await api.client.get("/v1/adapters/recipes/lineage")
    assert r.status_code == 401
    inf = await api.key("consumer", "inference")
    r = await api.client.get("/v1/adapters/nope/lineage", headers=inf)
    assert r.status_code == 404
    assert_conforms(r.json(), "ErrorResponse")
    r = await api.client.get("/v1/adapters/jobs/ftjob-x", headers=inf)
    assert r.status_code == 403
    assert (await api.client.get("/v1/adapters", headers=inf)).json() == {
        "object": "list",
        "data": [],
    }


async def test_the_worker_command_fails_what_cannot_train_and_stops_on_sigterm(
    engine: AsyncEngine, database_url: str, tiny_base: DemoModels, tmp_path: Path
) -> None:
    """`royalty training worker` as `royalty up` starts it: a job for a datanet that is gone
    fails at once with the reason; SIGTERM ends the worker promptly."""
    jobs = PostgresTrainingJobs(engine)
    job = (await jobs.enqueue(TrainingRequest("gone", "gone", "builder", steps=1))).job
    royalty = Path(sys.executable).with_name("royalty")
    child = await asyncio.create_subprocess_exec(
        str(royalty), "training", "worker", "--idle", "0.2", "--models-dir", str(tiny_base.root),
        "--adapters-dir", str(tmp_path / "adapters"), "--data-dir", str(tmp_path),
        env={**os.environ, "DATABASE_URL": database_url},
    )  # fmt: skip
    try:
        for _ in range(600):
            seen = await jobs.get(job.id)
            if seen is not None and seen.state == "failed":
                break
            assert child.returncode is None, "the worker exited"
            await asyncio.sleep(0.1)
        assert seen is not None and seen.state == "failed", seen
        assert (seen.error_type, seen.attempts) == ("NotFound", 1) and "gone" in (seen.error or "")
        child.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(child.wait(), 15) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
