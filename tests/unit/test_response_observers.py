"""The seams added for wash-traffic detection and gradient influence: every usage record
carries a keyed digest of its prompt (never the prompt), and answered adapter responses are
handed to observers with their prompt and output, after the usage record is written; an
observer that fails never fails the response."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from support.gateway_harness import make_harness

from gateway.inference import CompletedResponse
from metering.usage.record import prompt_digest
from metering.usage.recorder import as_usage_sink

CHAT = {"model": "legal", "messages": [{"role": "user", "content": "A clause"}], "max_tokens": 5}


def test_prompt_digest_sees_through_case_and_whitespace_but_not_content() -> None:
    a = prompt_digest([{"role": "user", "content": "Buy  NOW\n"}])
    assert a == prompt_digest([{"role": "user", "content": "buy now"}])
    assert a != prompt_digest([{"role": "user", "content": "buy later"}])
    assert a != prompt_digest([{"role": "system", "content": "buy now"}])
    assert prompt_digest("x", b"k1") != prompt_digest("x", b"k2")
    assert "buy" not in a and len(a) == 32


@pytest.fixture
async def gw():
    h = make_harness()
    seen: list[CompletedResponse] = []
    order: list[str] = []
    sink = h.services.inference.usage

    async def recording_sink(rec: Any) -> None:
        await sink.record(rec)
        order.append("usage")

    def observe(done: CompletedResponse) -> None:
        assert order and order[-1] == "usage", "observed before the usage record was written"
        seen.append(done)

    def broken(done: CompletedResponse) -> None:
        raise RuntimeError("queue full")

    h.services.inference.usage = as_usage_sink(recording_sink)
    h.services.inference.observers = (broken, observe)
    async with AsyncTestClient(app=h.app()) as client:
        client.h, client.seen = h, seen  # type: ignore[attr-defined]
        client.hdr = {"Authorization": f"Bearer {await h.key()}"}  # type: ignore[attr-defined]
        yield client


async def test_adapter_response_is_observed_with_prompt_and_output(gw) -> None:
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    assert r.status_code == 200, r.text
    [done] = gw.seen
    assert done.adapter == "legal" and done.endpoint == "chat.completions"
    assert done.request_id == r.headers["x-request-id"]
    assert done.prompt == [{"role": "user", "content": "A clause"}]
    assert done.output == r.json()["choices"][0]["message"]["content"]
    [rec] = gw.h.records
    assert rec.prompt_digest == prompt_digest(done.prompt)
    assert done.started_at == rec.started_at  # the influence job's month is the event's


async def test_streamed_completion_is_observed_once(gw) -> None:
    body = {"model": "legal", "prompt": "The tenant", "max_tokens": 5, "stream": True}
    r = await gw.post("/v1/completions", json=body, headers=gw.hdr)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    [done] = gw.seen
    assert done.prompt == "The tenant" and done.output
    [rec] = gw.h.records
    assert rec.prompt_digest == prompt_digest("the tenant")


async def test_base_model_and_failed_requests_are_not_observed(gw) -> None:
    bad = await gw.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=gw.hdr)
    assert bad.status_code == 404
    base = {**CHAT, "model": "royalty-tiny"}
    ok = await gw.post("/v1/chat/completions", json=base, headers=gw.hdr)
    assert ok.status_code == 200
    assert gw.seen == []
    assert gw.h.records and all(r.prompt_digest for r in gw.h.records)
