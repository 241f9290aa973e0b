"""Attribution on the HTTP surface (fake engine, a stand-in attributor that records what it
was asked): non-streaming responses carry `attribution`, streams carry it on a last chunk
before [DONE], the usage record keeps it, base-model requests and failing attributors leave
responses unattributed but intact, and every body still conforms to OpenAI's schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from support.gateway_harness import make_harness
from support.openai_schema import assert_conforms

CHAT = {"model": "legal", "messages": [{"role": "user", "content": "A clause"}], "max_tokens": 5}


def sse(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]


class RecordingAttributor:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def __call__(self, adapter: str, text: str) -> dict[str, Any] | None:
        self.calls.append((adapter, text))
        if self.fail:
            raise RuntimeError("index gone")
        return {"object": "attribution", "adapter": adapter, "chars": len(text),
                "contributors": [{"id": 7, "weight": 1.0, "weight_ppm": 1_000_000}]}  # fmt: skip


@pytest.fixture
async def gw():
    h = make_harness()
    h.services.inference.attributor = RecordingAttributor()
    async with AsyncTestClient(app=h.app()) as client:
        client.h = h  # type: ignore[attr-defined]
        client.hdr = {"Authorization": f"Bearer {await h.key()}"}  # type: ignore[attr-defined]
        yield client


async def test_non_streaming_carries_attribution_of_its_output(gw) -> None:
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    body = r.json()
    assert_conforms(body, "CreateChatCompletionResponse")
    att = body["attribution"]
    [(adapter, text)] = gw.h.services.inference.attributor.calls
    assert adapter == "legal" and text == body["choices"][0]["message"]["content"]
    assert att["chars"] == len(text)
    [rec] = gw.h.records
    assert json.loads(rec.attribution) == att


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_stream_ends_with_an_attribution_chunk(gw, endpoint: str) -> None:
    if endpoint == "chat":
        path, body, schema = (
            "/v1/chat/completions",
            {**CHAT, "stream": True},
            "CreateChatCompletionStreamResponse",
        )
    else:
        path, schema = "/v1/completions", None
        body = {"model": "legal", "prompt": "The tenant", "max_tokens": 5, "stream": True}
    r = await gw.post(path, json=body, headers=gw.hdr)
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["attribution"]["adapter"] == "legal"
    chunks = [json.loads(e) for e in events[:-2]]
    assert last["id"] == chunks[-1]["id"] and last["model"] == "legal"
    text = "".join(
        (c["choices"][0].get("delta", {}).get("content") or "") if endpoint == "chat"
        else c["choices"][0].get("text", "") for c in chunks if c["choices"]
    )  # fmt: skip
    assert gw.h.services.inference.attributor.calls == [("legal", text)]
    if schema:
        for c in [*chunks, last]:
            assert_conforms(c, schema)
    assert json.loads(gw.h.records[-1].attribution) == last["attribution"]


async def test_usage_chunk_stays_last_and_carries_the_attribution(gw) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    events = sse((await gw.post("/v1/chat/completions", json=body, headers=gw.hdr)).text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5
    assert last["attribution"]["adapter"] == "legal"
    assert all(c["choices"] and c.get("usage") is None for c in chunks[:-1])
    for c in chunks:
        assert_conforms(c, "CreateChatCompletionStreamResponse")
    # A base-model stream with usage: the usage chunk, unchanged, is still last.
    body["model"] = "royalty-tiny"
    events = sse((await gw.post("/v1/chat/completions", json=body, headers=gw.hdr)).text)
    last = json.loads(events[-2])
    assert last["usage"]["completion_tokens"] == 5 and "attribution" not in last


async def test_base_model_requests_are_not_attributed(gw) -> None:
    r = await gw.post(
        "/v1/chat/completions", json={**CHAT, "model": "royalty-tiny"}, headers=gw.hdr
    )
    assert "attribution" not in r.json()
    assert gw.h.services.inference.attributor.calls == []
    assert gw.h.records[-1].attribution is None


async def test_a_failing_attributor_never_fails_the_response(gw) -> None:
    gw.h.services.inference.attributor = RecordingAttributor(fail=True)
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    assert r.status_code == 200 and "attribution" not in r.json()
    r = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=gw.hdr)
    events = sse(r.text)
    assert events[-1] == "[DONE]" and all('"attribution"' not in e for e in events)
    assert [rec.status for rec in gw.h.records] == ["ok", "ok"]


async def test_max_tokens_over_the_cap_is_a_400_naming_the_field(gw) -> None:
    gw.h.services.inference.max_tokens_cap = 64
    r = await gw.post("/v1/completions", json={"model": "legal", "prompt": "x", "max_tokens": 65},
                      headers=gw.hdr)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = await gw.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 10**9},
                      headers=gw.hdr)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    r = await gw.post("/v1/chat/completions", json={**CHAT, "max_tokens": 64}, headers=gw.hdr)
    assert r.status_code == 200
