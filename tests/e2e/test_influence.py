"""Gradient influence on the real stack: a response of a demo adapter, answered through the
official OpenAI SDK by vLLM, is queued for influence; the worker child of `royalty up` scores
it against the adapter's precomputed per-record gradients, refines its weights, adjusts the
ledger, and deletes the prompt and output text. The refined record names only the adapter's
snapshot and its weights still sum to exactly 1."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import openai
import pytest
from support.procs import create_key

pytestmark = pytest.mark.e2e


def _get(gateway, key: str, path: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.get(
        gateway.base_url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_influence_refines_a_served_response(gateway, database_url) -> None:  # type: ignore[no-untyped-def]
    key = create_key(database_url, "influence-e2e")
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
    records = _get(gateway, key, "/v1/adapters/recipes/records?limit=10000").json()["data"]
    in_snapshot = {r["record_id"]: r["contributor_account_id"] for r in records}
    raw = client.chat.completions.with_raw_response.create(
        model="recipes", messages=[{"role": "user", "content": "A recipe for bread, please."}],
        max_tokens=40, temperature=0,
    )  # fmt: skip
    done = raw.parse()
    assert done.choices[0].message.content
    rid = raw.headers["x-request-id"]

    deadline = time.monotonic() + 240  # the worker loads the adapter once, then scores
    while True:
        r = _get(gateway, key, f"/v1/attributions/{rid}")
        influence = r.json().get("influence") if r.status_code == 200 else None
        if influence and influence["state"] in ("done", "failed", "expired"):
            break
        assert time.monotonic() < deadline, (r.status_code, r.text, gateway.log()[-3000:])
        time.sleep(1)
    assert influence["state"] == "done", influence
    assert influence["method"].startswith("royalty-influence/")
    assert influence["top_records"], influence
    for top in influence["top_records"]:
        assert top["id"] in in_snapshot
    weights = influence["contributors"]
    assert sum(c["weight_ppm"] for c in weights) == 1_000_000
    assert {c["id"] for c in weights} <= set(in_snapshot.values())
    assert "bread" not in r.text.lower()  # the record shows no prompt text

    # Privacy: once the job is done, only digests, offsets and weights remain.
    assert asyncio.run(_text_kept(database_url, rid)) is False


async def _text_kept(url: str, request_id: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT prompt IS NOT NULL OR output IS NOT NULL FROM influence_jobs "
                "WHERE request_id = $1",
                request_id,
            )
        )
    finally:
        await conn.close()
