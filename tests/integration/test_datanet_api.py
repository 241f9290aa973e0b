"""Datanets over HTTP and the CLI against a real PostgreSQL: contributions (single and bulk),
rejections in OpenAI's error shape, scopes, privacy between contributors, curation,
snapshots and inclusion proofs, and `royalty datanet create/import/publish`."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine
from support.app import app_over_postgres
from support.openai_schema import assert_conforms
from typer.testing import CliRunner

from attribution.service import DatanetService
from attribution.snapshots import InclusionProof, verify_inclusion
from gateway.auth import PostgresKeyStore
from gateway.container import Services
from royalty.cli.main import app as cli_app
from royalty.db import create_engine

pytestmark = pytest.mark.integration

VOCAB = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "nrstvxlm"]


def prose(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n)) + "."


class Api:
    """A test client plus keys for a few accounts."""

    def __init__(self, client: AsyncTestClient[Any], keys: PostgresKeyStore) -> None:
        self.client = client
        self.keys = keys

    async def key(self, account: str, *scopes: str) -> dict[str, str]:
        k, _ = await self.keys.create(account, frozenset(scopes), None, None)
        return {"Authorization": f"Bearer {k}"}

    async def datanet(self, hdr: dict[str, str], name: str = "dn", **kw: Any) -> int:
        r = await self.client.post(
            "/v1/datanets", json={"name": name, "licence": "MIT", **kw}, headers=hdr
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


@pytest.fixture
async def api(engine: AsyncEngine, database_url: str) -> AsyncIterator[Api]:
    """The app with the real key store and `DatanetService` (see support/app.py); the test's
    own engine only creates keys."""

    async def wire(services: Services, app_engine: AsyncEngine) -> None:
        services.datanets = DatanetService(app_engine)

    async with app_over_postgres(database_url, wire) as client:
        yield Api(client, PostgresKeyStore(engine))


def assert_error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert_conforms(body, "ErrorResponse")
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


async def test_create_list_get(api: Api) -> None:
    cur = await api.key("owner", "curator")
    did = await api.datanet(cur, "med-qa", description="medical QA", acceptance="curated")
    inf = await api.key("consumer", "inference")
    r = await api.client.get("/v1/datanets", headers=inf)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    [d] = body["data"]
    assert d["id"] == did and d["name"] == "med-qa" and d["acceptance"] == "curated"
    assert d["licence"] == "MIT" and d["description"] == "medical QA" and d["owner"]
    r = await api.client.get(f"/v1/datanets/{did}", headers=inf)
    assert r.status_code == 200 and r.json()["name"] == "med-qa"
    assert_error(await api.client.get("/v1/datanets/999999", headers=inf), 404, "not_found")
    assert_error(await api.client.get("/v1/datanets/abc", headers=inf), 404)
    # creating needs the curator scope; names are unique and checked
    contrib = await api.key("alice", "contributor")
    r = await api.client.post("/v1/datanets", json={"name": "x", "licence": "MIT"}, headers=contrib)
    assert_error(r, 403)
    r = await api.client.post(
        "/v1/datanets", json={"name": "med-qa", "licence": "MIT"}, headers=cur
    )
    assert_error(r, 409, "conflict")
    r = await api.client.post("/v1/datanets", json={"name": "Bad!", "licence": "MIT"}, headers=cur)
    assert_error(r, 400)
    r = await api.client.post("/v1/datanets", json={"licence": "MIT"}, headers=cur)
    assert assert_error(r, 400)["param"] == "name"


async def test_submit_text_and_pair_then_read_own(api: Api) -> None:
    did = await api.datanet(await api.key("owner", "curator"))
    alice = await api.key("alice", "contributor")
    r = await api.client.post(
        f"/v1/datanets/{did}/records",
        json={"text": prose(1), "metadata": {"source": "me"}},
        headers=alice,
    )
    assert r.status_code == 201, r.text
    text_rec = r.json()
    assert text_rec["status"] == "accepted" and isinstance(text_rec["id"], int)
    r = await api.client.post(
        f"/v1/datanets/{did}/records",
        json={"prompt": prose(2, 20), "completion": prose(3, 40)},
        headers=alice,
    )
    assert r.status_code == 201, r.text
    pair_rec = r.json()
    assert pair_rec["status"] == "accepted"
    r = await api.client.get("/v1/me/records", headers=alice)
    assert r.status_code == 200
    mine = {x["id"]: x for x in r.json()["data"]}
    assert set(mine) == {text_rec["id"], pair_rec["id"]}
    assert mine[text_rec["id"]]["metadata"] == {"source": "me"}
    assert mine[pair_rec["id"]]["kind"] == "pair"
    r = await api.client.get(f"/v1/datanets/{did}/records/{text_rec['id']}", headers=alice)
    assert r.status_code == 200 and r.json()["text"] == prose(1)


async def test_exact_duplicate_from_another_contributor_is_409(api: Api) -> None:
    did = await api.datanet(await api.key("owner", "curator"))
    alice = await api.key("alice", "contributor")
    bob = await api.key("bob", "contributor")
    r = await api.client.post(f"/v1/datanets/{did}/records", json={"text": prose(1)}, headers=alice)
    first = r.json()["id"]
    r = await api.client.post(
        f"/v1/datanets/{did}/records", json={"text": prose(1).upper() + "  "}, headers=bob
    )
    err = assert_error(r, 409, "duplicate")
    assert str(first) in err["message"]
    assert err["result"]["duplicate_of"] == first and err["result"]["status"] == "rejected"


async def test_rejections_name_their_rule(api: Api) -> None:
    did = await api.datanet(
        await api.key("owner", "curator"), policy={"max_bytes": 2000, "min_chars": 20}
    )
    alice = await api.key("alice", "contributor")
    url = f"/v1/datanets/{did}/records"
    err = assert_error(await api.client.post(url, json={"text": "too short"}, headers=alice), 400)
    assert err["code"] == "too_short" and "minimum" in err["message"]
    r = await api.client.post(url, json={"text": "ab " * 40}, headers=alice)
    assert_error(r, 400, "repetitive")
    r = await api.client.post(url, json={"text": "1234 5678 9012 3456 7890 !!!"}, headers=alice)
    assert_error(r, 400, "non_text")
    assert_error(await api.client.post(url, json={"text": prose(5, 800)}, headers=alice), 413)
    r = await api.client.post(url, json={"prompt": "only a prompt here"}, headers=alice)
    assert_error(r, 400, "invalid_schema")
    r = await api.client.post(
        url, content=b'{"text": "\xff\xfe not utf-8 at all here"}', headers=alice
    )
    assert_error(r, 400, "invalid_utf8")
    assert_error(await api.client.post("/v1/datanets/999999/records", json={"text": prose(1)},
                                       headers=alice), 404)  # fmt: skip


async def test_rate_limited_is_429_with_retry_after(api: Api) -> None:
    did = await api.datanet(await api.key("owner", "curator"), policy={"max_records_per_minute": 1})
    alice = await api.key("alice", "contributor")
    url = f"/v1/datanets/{did}/records"
    assert (await api.client.post(url, json={"text": prose(1)}, headers=alice)).status_code == 201
    r = await api.client.post(url, json={"text": prose(2)}, headers=alice)
    err = assert_error(r, 429, "rate_limited")
    assert err["type"] == "rate_limit_error" and int(r.headers["retry-after"]) > 0


async def test_scopes(api: Api) -> None:
    did = await api.datanet(await api.key("owner", "curator"))
    inf = await api.key("consumer", "inference")
    r = await api.client.post(f"/v1/datanets/{did}/records", json={"text": prose(1)}, headers=inf)
    assert assert_error(r, 403)["type"] == "permission_error"
    r = await api.client.post(
        f"/v1/datanets/{did}/records/bulk", content=json.dumps({"text": prose(1)}), headers=inf
    )
    assert_error(r, 403)
    assert_error(await api.client.get("/v1/me/records", headers=inf), 403)
    assert_error(await api.client.post(f"/v1/datanets/{did}/snapshots", headers=inf), 403)
    assert_error(await api.client.get("/v1/datanets"), 401)
    # a curator key that is not this datanet's curator cannot see its pending records
    other = await api.key("other-curator", "curator")
    assert_error(await api.client.get(f"/v1/datanets/{did}/records/pending", headers=other), 403)
    assert_error(await api.client.post(f"/v1/datanets/{did}/snapshots", headers=other), 403)


async def test_contributor_cannot_read_or_alter_anothers_records(api: Api) -> None:
    did = await api.datanet(await api.key("owner", "curator"), acceptance="curated")
    alice = await api.key("alice", "contributor")
    bob = await api.key("bob", "contributor")
    r = await api.client.post(f"/v1/datanets/{did}/records", json={"text": prose(1)}, headers=alice)
    rid = r.json()["id"]
    assert r.json()["status"] == "pending"
    r = await api.client.get(f"/v1/datanets/{did}/records/{rid}", headers=bob)
    assert_error(r, 404, "not_found")
    assert (await api.client.get("/v1/me/records", headers=bob)).json()["data"] == []
    r = await api.client.post(
        f"/v1/datanets/{did}/records/{rid}/decision",
        json={"approve": True, "reason": "mine now"},
        headers=bob,
    )
    assert_error(r, 403)
    # even with the curator scope, bob is not this datanet's curator
    bob_cur = await api.key("bob", "contributor", "curator")
    r = await api.client.post(
        f"/v1/datanets/{did}/records/{rid}/decision",
        json={"approve": True, "reason": "mine now"},
        headers=bob_cur,
    )
    assert r.status_code in (403, 404)
    assert_conforms(r.json(), "ErrorResponse")
    r = await api.client.get(f"/v1/datanets/{did}/records/{rid}", headers=alice)
    assert r.json()["status"] == "pending"


async def test_curated_flow(api: Api) -> None:
    owner = await api.key("owner", "curator")
    did = await api.datanet(owner, acceptance="curated")
    alice = await api.key("alice", "contributor")
    url = f"/v1/datanets/{did}/records"
    ids = []
    for seed in (1, 2):
        r = await api.client.post(url, json={"text": prose(seed)}, headers=alice)
        assert r.status_code == 201 and r.json()["status"] == "pending"
        ids.append(r.json()["id"])
    r = await api.client.get(f"/v1/datanets/{did}/records/pending", headers=owner)
    assert r.status_code == 200
    assert [x["id"] for x in r.json()["data"]] == ids
    r = await api.client.post(
        f"{url}/{ids[0]}/decision", json={"approve": True, "reason": "good"}, headers=owner
    )
    assert r.status_code == 200, r.text
    dec = r.json()
    assert dec["to_status"] == "accepted" and dec["from_status"] == "pending"
    assert dec["reason"] == "good" and dec["curator_account_id"]
    r = await api.client.post(
        f"{url}/{ids[1]}/decision", json={"approve": False, "reason": "off topic"}, headers=owner
    )
    assert r.json()["to_status"] == "rejected"
    # a decided record cannot be decided again; a decision needs a reason
    r = await api.client.post(
        f"{url}/{ids[1]}/decision", json={"approve": True, "reason": "changed my mind"},
        headers=owner,
    )  # fmt: skip
    assert_error(r, 409, "conflict")
    r = await api.client.post(
        f"{url}/{ids[0]}/decision", json={"approve": True, "reason": " "}, headers=owner
    )
    assert_error(r, 400)
    r = await api.client.post(f"{url}/{ids[0]}/decision", json={"approve": True}, headers=owner)
    assert assert_error(r, 400)["param"] == "reason"
    assert (await api.client.get(f"{url}/pending", headers=owner)).json()["data"] == []
    mine = {
        x["id"]: x for x in (await api.client.get("/v1/me/records", headers=alice)).json()["data"]
    }
    assert mine[ids[0]]["status"] == "accepted"
    assert mine[ids[1]]["status"] == "rejected" and mine[ids[1]]["reason"] == "curator_rejected"
    # a record id of another datanet is not found under this one
    other = await api.datanet(owner, "other")
    r = await api.client.post(
        f"/v1/datanets/{other}/records/{ids[0]}/decision",
        json={"approve": True, "reason": "x"},
        headers=owner,
    )
    assert_error(r, 404)


async def test_publish_and_proof(api: Api) -> None:
    owner = await api.key("owner", "curator")
    did = await api.datanet(owner)
    alice = await api.key("alice", "contributor")
    bob = await api.key("bob", "contributor")
    url = f"/v1/datanets/{did}/records"
    assert_error(await api.client.post(f"/v1/datanets/{did}/snapshots", headers=owner), 400)
    a_ids = [
        (await api.client.post(url, json={"text": prose(s)}, headers=alice)).json()["id"]
        for s in (1, 2, 3)
    ]
    b_id = (await api.client.post(url, json={"text": prose(4)}, headers=bob)).json()["id"]
    # a contributor cannot publish
    assert_error(await api.client.post(f"/v1/datanets/{did}/snapshots", headers=alice), 403)
    r = await api.client.post(f"/v1/datanets/{did}/snapshots", headers=owner)
    assert r.status_code == 201, r.text
    snap = r.json()
    assert snap["record_count"] == 4 and snap["token_count"] == 4 * 60
    assert len(snap["root"]) == 64 and snap["id"]
    r = await api.client.get(f"/v1/datanets/{did}/snapshots", headers=alice)
    assert [s["id"] for s in r.json()["data"]] == [snap["id"]]
    for rid in a_ids:
        r = await api.client.get(f"/v1/snapshots/{snap['id']}/proof/{rid}", headers=alice)
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["root"] == snap["root"] and p["record_id"] == rid
        proof = msgspec.convert(p["proof"], InclusionProof)
        assert verify_inclusion(bytes.fromhex(p["record_hash"]), proof, bytes.fromhex(snap["root"]))
        assert not verify_inclusion(
            bytes.fromhex(p["record_hash"]), proof, bytes.fromhex("00" * 32)
        )
    # alice cannot get a proof for bob's record; the curator can
    assert_error(await api.client.get(f"/v1/snapshots/{snap['id']}/proof/{b_id}", headers=alice),
                 404)  # fmt: skip
    r = await api.client.get(f"/v1/snapshots/{snap['id']}/proof/{b_id}", headers=owner)
    assert r.status_code == 200
    assert_error(await api.client.get(f"/v1/snapshots/nope/proof/{b_id}", headers=owner), 404)
    # later contributions go to the next snapshot; the first one is unchanged
    await api.client.post(url, json={"text": prose(5)}, headers=alice)
    r2 = (await api.client.post(f"/v1/datanets/{did}/snapshots", headers=owner)).json()
    assert r2["id"] != snap["id"] and r2["record_count"] == 5
    r = await api.client.get(f"/v1/datanets/{did}/snapshots", headers=owner)
    by_id = {s["id"]: s for s in r.json()["data"]}
    assert by_id[snap["id"]] == snap


async def test_bulk_jsonl_per_line_and_atomic(api: Api) -> None:
    did = await api.datanet(await api.key("owner", "curator"))
    alice = await api.key("alice", "contributor")
    url = f"/v1/datanets/{did}/records/bulk"
    lines = [
        json.dumps({"text": prose(1)}),
        "",
        "{not json",
        json.dumps({"prompt": prose(2, 10), "completion": prose(3, 30)}),
        json.dumps({"text": "short"}),
        json.dumps({"text": prose(1)}),
    ]
    body = "\n".join(lines) + "\n"
    hdr = {**alice, "Content-Type": "application/x-ndjson"}
    # atomic: one bad line and nothing is written
    r = await api.client.post(url, content=body, headers=hdr, params={"atomic": "true"})
    err = assert_error(r, 400, "bulk_rejected")
    assert "nothing was written" in err["message"]
    data = r.json()["data"]
    assert [x["line"] for x in data] == [1, 3, 4, 5, 6]
    assert [x["status"] for x in data] == ["accepted", "rejected", "accepted", "rejected",
                                           "rejected"]  # fmt: skip
    assert (await api.client.get("/v1/me/records", headers=alice)).json()["data"] == []
    # non-atomic: per-line results
    r = await api.client.post(url, content=body, headers=hdr, params={"atomic": "false"})
    assert r.status_code == 200, r.text
    out = r.json()
    res = out["data"]
    assert [x["line"] for x in res] == [1, 3, 4, 5, 6]
    assert [(x["status"], x.get("reason")) for x in res] == [
        ("accepted", None),
        ("rejected", "invalid_schema"),
        ("accepted", None),
        ("rejected", "too_short"),
        ("rejected", "duplicate"),
    ]
    assert res[4]["duplicate_of"] == res[0]["id"]
    assert out["summary"]["accepted"] == 2 and out["summary"]["rejected"] == 3
    assert out["summary"]["rejected_reasons"] == {
        "invalid_schema": 1, "too_short": 1, "duplicate": 1,
    }  # fmt: skip
    mine = (await api.client.get("/v1/me/records", headers=alice)).json()["data"]
    assert sum(1 for m in mine if m["status"] == "accepted") == 2
    # a JSON array works too
    r = await api.client.post(url, json=[{"text": prose(7)}, {"text": prose(8)}], headers=alice)
    assert r.status_code == 200 and [x["status"] for x in r.json()["data"]] == ["accepted"] * 2
    assert_error(await api.client.post(url, content=b"", headers=alice), 400)
    r = await api.client.post(url, content=body, headers=hdr, params={"atomic": "maybe"})
    assert assert_error(r, 400)["param"] == "atomic"


def test_cli_create_import_publish(database_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--database-url", database_url, "--data-dir", str(tmp_path)]
    r = runner.invoke(
        cli_app,
        ["datanet", "create", "--name", "recipes", "--owner", "chef", "--licence", "CC-BY-4.0",
         "--mode", "open", "--description", "cooking", *common],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    did = int(r.stdout.strip())
    r = runner.invoke(cli_app, ["datanet", "list", *common])
    assert r.exit_code == 0 and "recipes" in r.stdout and "chef" in r.stdout
    r = runner.invoke(cli_app, ["datanet", "create", "--name", "recipes", "--owner", "x", *common])
    assert r.exit_code == 1

    f = tmp_path / "records.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps({"text": prose(1)}),
                json.dumps({"text": prose(2)}),
                json.dumps({"text": "tiny"}),
                json.dumps({"text": prose(1)}),
                json.dumps({"prompt": prose(3, 10), "completion": prose(4, 30)}),
            ]
        )
        + "\n"
    )
    base = ["datanet", "import", str(f), "--datanet", "recipes", "--contributor", "alice"]
    r = runner.invoke(cli_app, [*base, "--atomic", *common])
    assert r.exit_code == 1, r.output
    assert "nothing was written" in r.stdout
    r = runner.invoke(cli_app, ["datanet", "publish", "recipes", *common])
    assert r.exit_code == 1  # nothing accepted yet
    r = runner.invoke(cli_app, [*base, *common])
    assert r.exit_code == 0, r.output
    assert "accepted=3 pending=0 flagged=0 rejected=2" in r.stdout
    assert "rejected duplicate: 1" in r.stdout and "rejected too_short: 1" in r.stdout
    assert "line 3: rejected too_short" in r.stdout and "line 4: rejected duplicate" in r.stdout

    r = runner.invoke(cli_app, ["datanet", "publish", "recipes", *common])
    assert r.exit_code == 0, r.output
    snap = json.loads(r.stdout)
    assert snap["record_count"] == 3 and snap["datanet_id"] == did

    async def check() -> None:
        engine = create_engine(database_url, pool_size=1)
        try:
            svc = DatanetService(engine)
            records = await svc.snapshot_contents(snap["id"])
            assert len(records) == 3
            assert {r.contributor_account_id for r in records} != set()
            d = await svc.get_datanet_by_name("recipes")
            assert d.description == "cooking" and d.licence == "CC-BY-4.0"
        finally:
            await engine.dispose()

    asyncio.run(check())


def test_cli_curated_pending_and_decide(database_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--database-url", database_url, "--data-dir", str(tmp_path)]
    r = runner.invoke(
        cli_app,
        ["datanet", "create", "--name", "law", "--owner", "judge", "--mode", "curated",
         "--curator", "clerk", *common],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    f = tmp_path / "records.jsonl"
    f.write_text(json.dumps({"text": prose(1)}) + "\n" + json.dumps({"text": prose(2)}) + "\n")
    r = runner.invoke(
        cli_app,
        ["datanet", "import", str(f), "--datanet", "law", "--contributor", "alice", *common],
    )
    assert r.exit_code == 0 and "accepted=0 pending=2" in r.stdout, r.output
    r = runner.invoke(cli_app, ["datanet", "pending", "law", *common])
    assert r.exit_code == 0, r.output
    first, second = (json.loads(line) for line in r.stdout.splitlines())
    assert first["status"] == second["status"] == "pending"
    decide = ["datanet", "decide"]
    r = runner.invoke(cli_app, [*decide, str(first["id"]), "--curator", "clerk", "--reason", "ok",
                                *common])  # fmt: skip
    assert r.exit_code == 2  # neither --approve nor --reject
    r = runner.invoke(cli_app, [*decide, str(first["id"]), "--curator", "alice", "--approve",
                                "--reason", "mine", *common])  # fmt: skip
    assert r.exit_code == 1  # alice is no curator
    r = runner.invoke(cli_app, [*decide, str(first["id"]), "--curator", "clerk", "--approve",
                                "--reason", "on topic", *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["to_status"] == "accepted"
    r = runner.invoke(cli_app, [*decide, str(second["id"]), "--curator", "judge", "--reject",
                                "--reason", "off topic", *common])  # fmt: skip
    assert r.exit_code == 0 and json.loads(r.stdout)["to_status"] == "rejected"
    r = runner.invoke(cli_app, ["datanet", "pending", "law", *common])
    assert r.exit_code == 0 and r.stdout == ""
    r = runner.invoke(cli_app, ["datanet", "publish", "law", *common])
    assert r.exit_code == 0 and json.loads(r.stdout)["record_count"] == 1


async def test_an_admin_decides_records_of_any_datanet(api: Api) -> None:
    owner = await api.key("owner2", "curator")
    did = await api.datanet(owner, "admin-decides", acceptance="curated")
    alice = await api.key("alice2", "contributor")
    r = await api.client.post(f"/v1/datanets/{did}/records", json={"text": prose(7)}, headers=alice)
    rid = r.json()["id"]
    stranger = await api.key("stranger", "curator")
    url = f"/v1/datanets/{did}/records/{rid}/decision"
    r = await api.client.post(url, json={"approve": True, "reason": "ok"}, headers=stranger)
    assert r.status_code == 404  # another datanet's curator does not learn the record exists
    admin = await api.key("ops", "admin")
    r = await api.client.post(url, json={"approve": True, "reason": "ok"}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["to_status"] == "accepted" and r.json()["curator_account_id"]


async def test_text_the_database_cannot_store_is_a_400_never_a_500(api: Api) -> None:
    """Issue 13, item 9: a NUL in a record was a 500 and aborted a non-atomic bulk upload."""
    cur = await api.key("owner", "curator")
    did = await api.datanet(cur)
    alice = await api.key("alice", "contributor")
    url = f"/v1/datanets/{did}/records"
    nul = b'{"text": "nul \\u0000 ' + prose(1).encode() + b'"}'
    err = assert_error(await api.client.post(url, content=nul, headers=alice), 400, "invalid_text")
    assert "NUL" in err["message"] and err["result"]["reason"] == "invalid_text"
    r = await api.client.post(
        url, json={"text": prose(2), "metadata": {"k\u0000": "v"}}, headers=alice
    )
    assert_error(r, 400, "invalid_text")
    deep = (
        b'{"text": "' + prose(3).encode() + b'", "metadata": ' + b'{"a": ' * 40 + b"1" + b"}" * 41
    )
    assert_error(await api.client.post(url, content=deep, headers=alice), 400, "invalid_schema")
    # a non-atomic bulk upload goes on past the bad lines
    body = b"\n".join(
        [
            b'{"text": "' + prose(4).encode() + b'"}',
            nul,
            deep,
            b'{"text": "' + prose(5).encode() + b'"}',
        ]
    )
    hdr = {**alice, "Content-Type": "application/x-ndjson"}
    r = await api.client.post(f"{url}/bulk", content=body, headers=hdr)
    assert r.status_code == 200, r.text
    assert [(x["line"], x["status"], x.get("reason")) for x in r.json()["data"]] == [
        (1, "accepted", None),
        (2, "rejected", "invalid_text"),
        (3, "rejected", "invalid_schema"),
        (4, "accepted", None),
    ]
    # atomic: rejected as a whole, each line answered
    r = await api.client.post(f"{url}/bulk", content=body, headers=hdr, params={"atomic": "1"})
    data = r.json()["data"]
    assert_error(r, 400, "bulk_rejected")
    assert [x.get("reason") for x in data] == [
        "duplicate",
        "invalid_text",
        "invalid_schema",
        "duplicate",
    ]
    # a JSON array nested past the decoder's limit
    r = await api.client.post(
        f"{url}/bulk", content=b"[" + b"[" * 5000 + b"]" * 5001, headers=alice
    )
    assert_error(r, 400, "invalid_json")
    # the datanet's own fields, ids past bigint, malformed snapshot ids
    for body_ in (
        {"name": "x1", "licence": "MIT\u0000"},
        {"name": "x2", "licence": "MIT", "description": "a\u0000"},
        {"name": "x3", "licence": "MIT", "description": "d" * 10_001},
        {"name": "x4\u0000", "licence": "MIT"},
        {"name": "x5", "licence": "MIT", "curators": [2**63]},
        {"name": "x6", "licence": "MIT", "policy": {"max_records_per_minute": 2**63}},
        {"name": "x7", "licence": "MIT", "policy": {"near_duplicate_threshold": 0}},
    ):
        assert_error(await api.client.post("/v1/datanets", json=body_, headers=cur), 400)
    big = str(2**63)
    assert_error(await api.client.get(f"/v1/datanets/{big}", headers=cur), 404)
    assert_error(await api.client.get(f"{url}/{big}", headers=alice), 404)
    assert_error(await api.client.get("/v1/snapshots/ab%00cd/proof/1", headers=alice), 404)
    assert_error(await api.client.get("/v1/snapshots/" + "a" * 64 + "/proof/1", headers=alice), 404)
    for bad in ("x%00y", "x" * 9000, "%FF%FE", "%ED%A0%80", "99999999999999999999"):
        for path in (f"/v1/datanets/{bad}", f"/v1/datanets/{bad}/snapshots", f"{url}/{bad}",
                     f"/v1/snapshots/{bad}/proof/1"):  # fmt: skip
            r = await api.client.get(path, headers=alice if "records" in path else cur)
            assert 400 <= r.status_code < 500, (path, r.text)
        r = await api.client.post(
            f"{url}/{bad}/decision", json={"approve": True, "reason": "x"}, headers=cur
        )
        assert 400 <= r.status_code < 500, r.text
    r = await api.client.get("/v1/me/records", params={"datanet": big}, headers=alice)
    assert assert_error(r, 400)["param"] == "datanet"
    r = await api.client.post(
        f"{url}/1/decision", json={"approve": True, "reason": "ok\u0000"}, headers=cur
    )
    assert_error(r, 400)


async def test_a_curator_cannot_decide_their_own_record(api: Api) -> None:
    """Issue 13, item 6: self-approval is a 403 in OpenAI's error shape."""
    owner = await api.key("owner", "curator")
    did = await api.datanet(owner, acceptance="curated")
    as_contributor = await api.key("owner", "contributor")  # the same account
    url = f"/v1/datanets/{did}/records"
    r = await api.client.post(url, json={"text": prose(11)}, headers=as_contributor)
    assert r.status_code == 201 and r.json()["status"] == "pending"
    rid = r.json()["id"]
    for approve in (True, False):
        r = await api.client.post(
            f"{url}/{rid}/decision", json={"approve": approve, "reason": "mine"}, headers=owner
        )
        err = assert_error(r, 403, "forbidden")
        assert err["type"] == "permission_error" and "own" in err["message"]
    admin_self = await api.key("owner", "admin")
    r = await api.client.post(
        f"{url}/{rid}/decision", json={"approve": True, "reason": "mine"}, headers=admin_self
    )
    assert_error(r, 403, "forbidden")
    pending = (await api.client.get(f"{url}/pending", headers=owner)).json()["data"]
    assert [p["id"] for p in pending] == [rid]
    # someone else decides it
    other = await api.key("admin-ops", "admin")
    r = await api.client.post(
        f"{url}/{rid}/decision", json={"approve": True, "reason": "checked"}, headers=other
    )
    assert r.status_code == 200 and r.json()["to_status"] == "accepted"


def test_cli_refuses_a_curators_decision_on_their_own_record(
    database_url: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    common = ["--database-url", database_url, "--data-dir", str(tmp_path)]
    r = runner.invoke(
        cli_app,
        ["datanet", "create", "--name", "law", "--owner", "judge", "--mode", "curated",
         "--curator", "clerk", *common],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    f = tmp_path / "records.jsonl"
    f.write_text(json.dumps({"text": prose(1)}) + "\n")
    r = runner.invoke(
        cli_app,
        ["datanet", "import", str(f), "--datanet", "law", "--contributor", "clerk", *common],
    )
    assert r.exit_code == 0, r.output
    (rec,) = (json.loads(x) for x in runner.invoke(
        cli_app, ["datanet", "pending", "law", *common]).stdout.splitlines())  # fmt: skip
    decide = ["datanet", "decide", str(rec["id"]), "--approve", "--reason", "fine", *common]
    r = runner.invoke(cli_app, [*decide, "--curator", "clerk"])
    assert r.exit_code == 1 and "own" in r.output, r.output
    r = runner.invoke(cli_app, [*decide, "--curator", "judge"])
    assert r.exit_code == 0 and json.loads(r.stdout)["to_status"] == "accepted", r.output
