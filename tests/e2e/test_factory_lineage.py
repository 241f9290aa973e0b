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
from procs import REPO, ROYALTY, create_key

from gateway.demo import DEMO_CONTRIBUTORS
from serving.factory.corpus import DOMAINS, domain_records

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
