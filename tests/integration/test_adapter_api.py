"""Adapter routes over HTTP against a real PostgreSQL: an admin trains an adapter through the
API (a background job), the registry sync serves it without a restart, and the lineage
routes answer with exactly the snapshot's contributors; scopes and bad input are refused in
OpenAI's error shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from openai_schema import assert_conforms
from sqlalchemy.ext.asyncio import AsyncEngine
from unit.gateway_harness import make_harness

from attribution.lineage import LineageService
from attribution.service import DatanetService
from factory.build import DemoModels, FactoryConfig, build_demo_models, demo_contributions
from gateway.app import create_app
from gateway.auth import Authenticator, PostgresKeyStore
from royalty.db import create_engine
from royalty.factory_jobs import AdapterSync
from royalty.settings import Settings

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
    h = make_harness(settings=Settings(adapters_dir=tmp_path / "adapters"))
    syncs: list[AdapterSync] = []
    app_engines: list[AsyncEngine] = []

    async def start() -> None:
        app_engine = create_engine(database_url, pool_size=4)
        app_engines.append(app_engine)
        h.services.auth = Authenticator(PostgresKeyStore(app_engine), ttl_s=0.0)
        h.services.datanets = DatanetService(app_engine)
        h.services.lineage = LineageService(app_engine)
        h.services.factory_base = tiny_base
        sync = AdapterSync(
            h.services.lineage,
            h.services.registry,
            "royalty-tiny",
            tiny_base.manifest["base"]["weights_sha256"],
            interval_s=0.1,
        )
        await sync.sync_once()
        sync.start()
        syncs.append(sync)

    async def stop() -> None:
        for s in syncs:
            await s.stop()
        for e in app_engines:
            await e.dispose()

    app = create_app(h.services, on_startup=[start], on_shutdown=[stop])
    async with AsyncTestClient(app=app) as client:
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
    job = r.json()
    for _ in range(600):
        job = (await api.client.get(f"/v1/adapters/jobs/{job['id']}", headers=admin)).json()
        if job["status"] != "running":
            break
        await asyncio.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert job["step"] == 20 and job["result"]["id"] == "clauses"

    # Served without a restart: /v1/models lists it, a completion through it works.
    inf = await api.key("consumer", "inference")
    for _ in range(50):
        models = (await api.client.get("/v1/models", headers=inf)).json()["data"]
        if "clauses" in {m["id"] for m in models}:
            break
        await asyncio.sleep(0.1)
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
    job = r.json()
    for _ in range(600):
        job = (await api.client.get(f"/v1/adapters/jobs/{job['id']}", headers=admin)).json()
        if job["status"] != "running":
            break
        await asyncio.sleep(0.1)
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
