"""Record content hashes through lineage (issue 13, item 9): an unsalted SHA-256 of a short
record lets whoever holds it confirm a guessed text, so `/v1/adapters/{name}/records` shows a
record's hash only to whoever may read the record -- its contributor (who checks their
inclusion proof with it), the datanet's owner and curators, an admin. An ordinary inference
key, or another contributor, sees positions, record ids and contributor ids only."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine
from support.app import app_over_postgres

from attribution.lineage import AdapterRegistration, LineageService
from attribution.records import Record, content_hash
from attribution.service import DatanetService
from attribution.snapshots import InclusionProof, leaf_hash, verify_inclusion
from gateway.auth import PostgresKeyStore
from gateway.container import Services

pytestmark = pytest.mark.integration

SECRET = "The launch code for the tide station is orange seven seven."


class Api:
    def __init__(self, client: AsyncTestClient[Any], keys: PostgresKeyStore) -> None:
        self.client = client
        self.keys = keys
        self.lineage: LineageService | None = None
        self.datanets: DatanetService | None = None

    async def key(self, account: str, *scopes: str) -> dict[str, str]:
        k, info = await self.keys.create(account, frozenset(scopes), None, None)
        return {"Authorization": f"Bearer {k}", "x-account": str(info.account_id)}


@pytest.fixture
async def api(engine: AsyncEngine, database_url: str) -> AsyncIterator[Api]:
    async def wire(services: Services, app_engine: AsyncEngine) -> None:
        services.datanets = DatanetService(app_engine)
        services.lineage = LineageService(app_engine)

    async with app_over_postgres(database_url, wire) as client:
        out = Api(client, PostgresKeyStore(engine))
        out.lineage, out.datanets = LineageService(engine), DatanetService(engine)
        yield out


async def _adapter_on(api: Api) -> dict[str, Any]:
    """A datanet with records of two contributors, published, and an adapter registered on
    its snapshot (registered directly: training is not what this tests)."""
    owner = await api.key("owner", "curator")
    did = int(
        (
            await api.client.post(
                "/v1/datanets", json={"name": "dn", "licence": "MIT"}, headers=owner
            )
        ).json()["id"]
    )
    ana, ben = await api.key("ana", "contributor"), await api.key("ben", "contributor")
    ids: dict[str, list[int]] = {"ana": [], "ben": []}
    hashes: set[str] = set()
    for who, hdr, texts in (
        ("ana", ana, [SECRET, "Ana writes about the moon and the tides of the northern sea."]),
        ("ben", ben, ["Ben writes about harbours, ropes and the sailors who tie them."]),
    ):
        for t in texts:
            r = await api.client.post(f"/v1/datanets/{did}/records", json={"text": t}, headers=hdr)
            assert r.status_code == 201, r.text
            ids[who].append(r.json()["id"])
            hashes.add(r.json()["content_hash"])
    snap = (await api.client.post(f"/v1/datanets/{did}/snapshots", headers=owner)).json()
    assert api.lineage is not None
    lineage = {
        "adapter": "tides",
        "weights_sha256": "ab" * 32,
        "snapshot": {"id": snap["id"], "datanet_id": did, "root": snap["root"],
                     "record_count": snap["record_count"], "token_count": snap["token_count"]},
        "records": {"count": snap["record_count"], "training_order": sorted(ids["ana"] + ids["ben"]),
                    "training_order_sha256": "cd" * 32},
    }  # fmt: skip
    await api.lineage.register(
        AdapterRegistration(
            name="tides", base_model="base", base_weights_sha256="ef" * 32,
            owner_account_id=int(owner["x-account"]), path="/nonexistent", weights_sha256="ab" * 32,
            lineage=lineage,
        )
    )  # fmt: skip
    return {"snap": snap, "ids": ids, "hashes": hashes, "owner": owner, "ana": ana, "ben": ben}


def _hashes(page: dict[str, Any]) -> dict[int, str | None]:
    return {x["record_id"]: x.get("record_hash") for x in page["data"]}


async def test_an_inference_key_cannot_read_record_hashes(api: Api) -> None:
    w = await _adapter_on(api)
    secret_hash = content_hash(Record(text=SECRET)).hex()
    secret_id = w["ids"]["ana"][0]
    inf = await api.key("consumer", "inference")
    for path in ("/v1/adapters/tides/records", "/v1/adapters/tides/lineage"):
        r = await api.client.get(path, headers=inf)
        assert r.status_code == 200, r.text
        # no record's hash (nor its Merkle leaf, as unsalted) anywhere in the answer
        found = set(re.findall(r"[0-9a-f]{64}", r.text))
        assert not found & (w["hashes"] | {leaf_hash(bytes.fromhex(h)).hex() for h in w["hashes"]})
    page = (await api.client.get("/v1/adapters/tides/records", headers=inf)).json()
    assert set(_hashes(page).values()) == {None}
    assert {x["record_id"] for x in page["data"]} == set(w["ids"]["ana"] + w["ids"]["ben"])
    # another contributor sees only their own record's hash
    page = (await api.client.get("/v1/adapters/tides/records", headers=w["ben"])).json()
    seen = {rid for rid, h in _hashes(page).items() if h is not None}
    assert seen == set(w["ids"]["ben"]) and secret_hash not in json.dumps(page)
    # the contributor sees theirs, and it verifies against the snapshot root with the proof
    page = (await api.client.get("/v1/adapters/tides/records", headers=w["ana"])).json()
    assert _hashes(page)[secret_id] == secret_hash
    proof = (
        await api.client.get(f"/v1/snapshots/{w['snap']['id']}/proof/{secret_id}", headers=w["ana"])
    ).json()
    assert verify_inclusion(
        bytes.fromhex(secret_hash),
        InclusionProof(**proof["proof"]),
        bytes.fromhex(w["snap"]["root"]),
    )
    # the datanet's owner and an admin see every hash
    for hdr in (w["owner"], await api.key("ops", "admin")):
        page = (await api.client.get("/v1/adapters/tides/records", headers=hdr)).json()
        assert None not in _hashes(page).values() and _hashes(page)[secret_id] == secret_hash


async def test_lineage_service_hides_hashes_from_other_viewers(api: Api) -> None:
    w = await _adapter_on(api)
    assert api.lineage is not None
    stranger = int((await api.key("stranger", "inference"))["x-account"])
    ana = int(w["ana"]["x-account"])
    assert {r.record_hash for r in await api.lineage.records("tides", viewer=stranger)} == {None}
    mine = {r.record_id for r in await api.lineage.records("tides", viewer=ana) if r.record_hash}
    assert mine == set(w["ids"]["ana"])
    assert None not in {r.record_hash for r in await api.lineage.records("tides")}
    # an adapter name the database could not hold is simply unknown
    inf = await api.key("consumer", "inference")
    r = await api.client.get("/v1/adapters/a%00b/lineage", headers=inf)
    assert r.status_code == 404
    for bad in ("x" * 9000, "%FF%FE", "%ED%A0%80", "99999999999999999999"):
        for tmpl in ("/v1/adapters/{}", "/v1/adapters/{}/lineage", "/v1/adapters/{}/records"):
            r = await api.client.get(tmpl.format(bad), headers=inf)
            assert r.status_code == 404, (tmpl, bad, r.text)
