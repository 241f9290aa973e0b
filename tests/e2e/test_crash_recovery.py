"""Invariant 1: a client that received a complete response has a usage record that survives a
`kill -9` of the gateway and lands in Postgres exactly once."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest
from support.procs import Gateway, create_key

pytestmark = pytest.mark.e2e


async def _rows(url: str, rid: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM usage_events WHERE request_id=$1", rid)
        )
    finally:
        await conn.close()


def test_kill_9_after_complete_responses_loses_nothing(
    vllm_url, demo_models, tmp_path, fresh_database_url
) -> None:  # type: ignore[no-untyped-def]
    db = fresh_database_url
    if True:
        args = [
            "--engine-url",
            vllm_url,
            "--models-dir",
            str(demo_models.root),
            "--database-url",
            db,
        ]
        # Shipping held back for an hour: only the local log can carry the records across.
        gw = Gateway(tmp_path / "gw", args, env={"ROYALTY_SHIP_INTERVAL_S": "3600"}).start()
        key = create_key(db, "crash-consumer")
        h = {"Authorization": f"Bearer {key}"}
        ids = []
        try:
            for _ in range(3):
                r = httpx.post(gw.base_url + "/v1/completions", headers=h, timeout=60,
                               json={"model": "recipes", "prompt": "Recipe:", "max_tokens": 4})  # fmt: skip
                assert r.status_code == 200
                ids.append(r.headers["x-request-id"])
            body = {"model": "legal", "max_tokens": 6, "stream": True,
                    "messages": [{"role": "user", "content": "The tenant shall"}]}  # fmt: skip
            with httpx.stream("POST", gw.base_url + "/v1/chat/completions", json=body, headers=h,
                              timeout=60) as r:  # fmt: skip
                lines = list(r.iter_lines())
                ids.append(r.headers["x-request-id"])
            assert "data: [DONE]" in lines
        finally:
            gw.kill9()
        assert [asyncio.run(_rows(db, rid)) for rid in ids] == [0, 0, 0, 0], "shipped before kill"

        gw.env["ROYALTY_SHIP_INTERVAL_S"] = "0.1"
        gw.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(asyncio.run(_rows(db, r)) == 0 for r in ids):
            time.sleep(0.2)
        assert [asyncio.run(_rows(db, rid)) for rid in ids] == [1, 1, 1, 1]
        assert gw.stop() == 0
        # A second restart replays nothing twice.
        gw.start()
        time.sleep(1.0)
        assert gw.stop() == 0
        assert [asyncio.run(_rows(db, rid)) for rid in ids] == [1, 1, 1, 1]
