"""The model factory end to end: the demo world `royalty up` creates (three datanets with
several contributors, adapters trained on their snapshots), and an adapter trained with
`royalty factory train` on a new datanet while the gateway runs, served at once through
the official OpenAI SDK, with its lineage over HTTP."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
from support.procs import REPO, ROYALTY, create_key

from factory.corpus import DOMAINS, domain_records
from royalty.demo import DEMO_CONTRIBUTORS

pytestmark = pytest.mark.e2e


def _get(gateway, key: str, path: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.get(
        gateway.base_url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_demo_datanets_and_adapter_lineage(gateway, database_url) -> None:  # type: ignore[no-untyped-def]
    key = create_key(database_url, "lineage-reader")
    names = {d["name"] for d in _get(gateway, key, "/v1/datanets").json()["data"]}
    assert set(DOMAINS) <= names
    for domain in DOMAINS:
        r = _get(gateway, key, f"/v1/adapters/{domain}/lineage")
        assert r.status_code == 200, r.text
        lin = r.json()
        assert lin["datanet"]["name"] == domain
        who = {c["account"]: c["records"] for c in lin["contributors"]}
        assert set(who) == {c for c, _ in DEMO_CONTRIBUTORS[domain]} and len(who) >= 3
        assert sum(who.values()) == lin["record_count"] == lin["snapshot"]["record_count"]
        assert len(lin["base_model"]["weights_sha256"]) == 64
        assert lin["metrics"]["final_loss"] > 0
        assert "loss_curve" in lin["metrics"]
    assert _get(gateway, key, "/v1/adapters/no-such/lineage").status_code == 404
    assert httpx.get(gateway.base_url + "/v1/adapters/recipes/lineage").status_code == 401


def test_factory_train_is_served_without_restart(  # type: ignore[no-untyped-def]
    gateway, database_url, demo_models, tmp_path: Path
) -> None:
    db = ["--database-url", database_url]
    run = dict(check=True, capture_output=True, text=True, timeout=900)
    subprocess.run([ROYALTY, "datanet", "create", "--name", "tenancy-notes", "--owner",
                    "builder", *db], **run)  # type: ignore[call-overload]  # fmt: skip
    records = domain_records("legal", 4242, 240)
    for i, who in enumerate(("ana-e2e", "ben-e2e")):
        f = tmp_path / f"{who}.jsonl"
        f.write_text("".join(json.dumps({"text": r}) + "\n" for r in records[i::2]))
        subprocess.run([ROYALTY, "datanet", "import", str(f), "--datanet", "tenancy-notes",
                        "--contributor", who, *db], **run)  # type: ignore[call-overload]  # fmt: skip
    subprocess.run([ROYALTY, "datanet", "publish", "tenancy-notes", *db], **run)  # type: ignore[call-overload]
    out = subprocess.run(
        [ROYALTY, "factory", "train", "--datanet", "tenancy-notes", "--name", "tenancy",
         "--owner", "builder", "--steps", "20", "--models-dir", str(demo_models.root), *db],
        **run,  # type: ignore[arg-type]
    )  # fmt: skip
    summary = json.loads(out.stdout)
    assert summary["adapter"] == "tenancy" and summary["owner"] == "builder"
    assert Path(summary["path"]).is_relative_to(REPO / ".royalty" / "adapters")

    key = create_key(database_url, "ana-e2e", "--scope", "inference", "--scope", "contributor")
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
    deadline = time.monotonic() + 15
    while "tenancy" not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "the trained adapter was not picked up"
        time.sleep(0.2)
    done = client.completions.create(
        model="tenancy", prompt="The tenant shall", max_tokens=12, temperature=0
    )
    assert done.model == "tenancy" and done.usage is not None and done.usage.completion_tokens > 0

    lin = _get(gateway, key, "/v1/adapters/tenancy/lineage").json()
    assert lin["snapshot"]["id"] == summary["snapshot"]
    assert {c["account"] for c in lin["contributors"]} == {"ana-e2e", "ben-e2e"}
    mine = _get(gateway, key, "/v1/me/adapters").json()["data"]
    assert [(m["adapter"], m["records"]) for m in mine] == [
        ("tenancy", next(c["records"] for c in lin["contributors"] if c["account"] == "ana-e2e"))
    ]

    # Retired: gone from the gateway within seconds, lineage history kept.
    subprocess.run([ROYALTY, "adapters", "retire", "tenancy", *db], **run)  # type: ignore[call-overload]
    deadline = time.monotonic() + 15
    while "tenancy" in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "the retired adapter is still served"
        time.sleep(0.2)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tenancy", prompt="The", max_tokens=2)


def test_responses_carry_attribution_within_the_snapshot(gateway, database_url) -> None:  # type: ignore[no-untyped-def]
    key = create_key(database_url, "attribution-e2e")
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
    records = _get(gateway, key, "/v1/adapters/legal/records?limit=10000").json()["data"]
    in_snapshot = {r["record_id"]: r["contributor_account_id"] for r in records}
    lin = _get(gateway, key, "/v1/adapters/legal/lineage").json()
    contributors = {c["account_id"]: c["account"] for c in lin["contributors"]}

    raw = client.completions.with_raw_response.create(
        model="legal", prompt="The tenant shall", max_tokens=48, temperature=0
    )
    done = raw.parse()
    att = done.model_extra["attribution"]  # type: ignore[index]
    assert att["adapter"] == "legal" and att["snapshot_id"] == lin["snapshot"]["id"]
    assert sum(c["weight_ppm"] for c in att["contributors"]) == 1_000_000
    assert abs(sum(c["weight"] for c in att["contributors"]) - 1) < 1e-9
    assert {c["id"] for c in att["contributors"]} <= set(contributors)
    for span in att["spans"]:
        assert set(span["record_ids"]) <= set(in_snapshot)
        assert 0 <= span["start"] < span["end"] <= len(done.choices[0].text)
    for top in att["top_records"]:
        assert in_snapshot[top["id"]] == top["contributor"]

    # Streaming: the SDK parses every chunk; the last one carries the attribution.
    chunks = list(client.chat.completions.create(
        model="legal", messages=[{"role": "user", "content": "Draft a clause for a lease."}],
        max_tokens=32, temperature=0, stream=True,
    ))  # fmt: skip
    last = chunks[-1].model_extra["attribution"]  # type: ignore[index]
    assert last["adapter"] == "legal" and chunks[-1].choices == []
    assert sum(c["weight_ppm"] for c in last["contributors"]) == 1_000_000

    # The full record, for the requesting key only; contributors see what credited them.
    rid = raw.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while (r := _get(gateway, key, f"/v1/attributions/{rid}")).status_code == 404:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert r.json()["attribution"] == att and r.json()["adapter"] == "legal"
    other = create_key(database_url, "someone-else")
    assert _get(gateway, other, f"/v1/attributions/{rid}").status_code == 404
    top = max(att["contributors"], key=lambda c: c["weight_ppm"])
    contributor = create_key(database_url, contributors[top["id"]], "--scope", "contributor")
    credits = _get(gateway, contributor, "/v1/me/attributions").json()["data"]
    mine = next(c for c in credits if c["request_id"] == rid)
    assert mine["weight_ppm"] == top["weight_ppm"] and mine["adapter"] == "legal"

    # The response is paid for: the posting worker credits the contributor it named first.
    deadline = time.monotonic() + 30
    while True:
        months = _get(gateway, contributor, "/v1/me/earnings").json()["months"]
        if any(m["total_micros"] > 0 for m in months):
            break
        assert time.monotonic() < deadline, months
        time.sleep(0.5)


def test_an_account_without_credit_gets_402(gateway, database_url) -> None:  # type: ignore[no-untyped-def]
    key = create_key(database_url, "no-credit-e2e", credit=None)
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model="legal", prompt="The tenant shall", max_tokens=8)
    assert e.value.status_code == 402
    assert e.value.response.json()["error"]["code"] == "insufficient_quota"
