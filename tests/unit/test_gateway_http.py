"""The HTTP surface over the fake engine: OpenAI shapes, errors, auth, limits, usage capture."""

from __future__ import annotations

import asyncio
import json

import pytest
from litestar.testing import AsyncTestClient
from support.gateway_harness import Harness, make_harness
from support.openai_schema import assert_conforms

CHAT = {"model": "recipes", "messages": [{"role": "user", "content": "Recipe:"}], "max_tokens": 6}


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]


@pytest.fixture
async def gw():
    h = make_harness()
    async with AsyncTestClient(app=h.app()) as client:
        client.h = h  # type: ignore[attr-defined]
        client.key = await h.key()  # type: ignore[attr-defined]
        client.hdr = {"Authorization": f"Bearer {client.key}"}  # type: ignore[attr-defined]
        yield client


async def test_chat_completion_conforms_and_is_recorded(gw) -> None:
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    assert r.status_code == 200
    body = r.json()
    assert_conforms(body, "CreateChatCompletionResponse")
    assert body["model"] == "recipes"
    rid = r.headers["x-request-id"]
    [rec] = gw.h.records
    assert rec.request_id == rid and rec.status == "ok" and rec.adapter == "recipes"
    assert rec.completion_tokens == body["usage"]["completion_tokens"] == 6
    assert rec.prompt_tokens == body["usage"]["prompt_tokens"]
    assert rec.output_sha256 and len(rec.output_sha256) == 64


async def test_completion_conforms(gw) -> None:
    r = await gw.post(
        "/v1/completions", json={"model": "royalty-tiny", "prompt": "The", "max_tokens": 3},
        headers=gw.hdr,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert_conforms(r.json(), "CreateCompletionResponse")
    assert gw.h.records[-1].adapter is None and gw.h.records[-1].base_model == "royalty-tiny"


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_stream_chunks_conform(gw, include_usage: bool) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": include_usage}}
    r = await gw.post("/v1/chat/completions", json=body, headers=gw.hdr)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for c in chunks:
        assert_conforms(c, "CreateChatCompletionStreamResponse")
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    rec = gw.h.records[-1]
    assert rec.status == "ok" and rec.completion_tokens == 6 and rec.ttft_ms is not None
    assert rec.request_id == r.headers["x-request-id"]
    import hashlib

    assert rec.output_sha256 == hashlib.sha256(text.encode() + b"\x1e").hexdigest()


async def test_unknown_fields_are_accepted(gw) -> None:
    body = {**CHAT, "store": False, "metadata": {"x": "y"}, "service_tier": "auto",
            "reasoning_effort": "low", "some_future_field": [1, 2]}  # fmt: skip
    r = await gw.post("/v1/chat/completions", json=body, headers=gw.hdr)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"max_tokens": "five"}, "max_tokens"),
        ({"temperature": 7}, "temperature"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"stream": "yes"}, "stream"),
        ({"model": 3}, "model"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
async def test_wrong_types_name_the_field(gw, patch: dict, param: str) -> None:
    r = await gw.post("/v1/chat/completions", json={**CHAT, **patch}, headers=gw.hdr)
    assert r.status_code == 400, r.text
    assert_conforms(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param
    assert "x-request-id" in r.headers


async def test_missing_field_is_named(gw) -> None:
    r = await gw.post("/v1/chat/completions", json={"model": "recipes"}, headers=gw.hdr)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


@pytest.mark.parametrize(
    "raw",
    [b'{"model": "recipes", "messages": [', b"not json", b"", b'{"model": "\xff\xfe"}', b"[1,2]"],
)
async def test_malformed_bodies_are_400(gw, raw: bytes) -> None:
    r = await gw.post("/v1/chat/completions", content=raw, headers=gw.hdr)
    assert r.status_code == 400, r.text
    assert_conforms(r.json(), "ErrorResponse")


async def test_completion_prompt_types(gw) -> None:
    for prompt, ok in [("x", True), (["a", "b"], True), ([1, 2, 3], True), ([[1], [2]], True),
                       ([1, "a"], False), ([], False), ({"a": 1}, False)]:  # fmt: skip
        r = await gw.post(
            "/v1/completions", json={"model": "legal", "prompt": prompt, "max_tokens": 1},
            headers=gw.hdr,
        )  # fmt: skip
        assert (r.status_code == 200) == ok, (prompt, r.text)
        if not ok:
            assert r.json()["error"]["param"] == "prompt"


async def test_oversized_body_is_413(gw) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 200_000}]}
    r = await gw.post("/v1/chat/completions", json=big, headers=gw.hdr)
    assert r.status_code == 413
    assert_conforms(r.json(), "ErrorResponse")
    ok = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    assert ok.status_code == 200  # still serving


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer rk-nope"}, 401), ({"Authorization": "Basic abc"}, 401)],
)
async def test_bad_keys(gw, headers: dict, status: int) -> None:
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == status
    assert_conforms(r.json(), "ErrorResponse")
    assert gw.h.records == []  # no account, nothing to meter


async def test_scope_is_required(gw) -> None:
    key = await gw.h.key("contributor")
    r = await gw.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = await gw.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403


# Public on purpose: health and Prometheus scrapes carry no key (docs/operations.md); the
# dashboard's page and login form ask for one, and its data needs an admin key or cookie.
PUBLIC = {("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/dashboard"),
          ("POST", "/dashboard/login"), ("POST", "/dashboard/logout")}  # fmt: skip


async def test_every_route_but_the_public_ones_needs_a_key(gw) -> None:
    for route in gw.app.routes:
        for method in route.methods - {"OPTIONS", "HEAD"}:  # type: ignore[attr-defined]
            path = route.path.replace("{model_id:path}", "recipes")
            r = await gw.request(method, path, json=CHAT)
            if (method, path) in PUBLIC:
                assert r.status_code < 500, (method, path, r.text)
            else:
                assert r.status_code == 401, (method, path, r.text)


async def test_unknown_model_is_404(gw) -> None:
    r = await gw.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}, headers=gw.hdr)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["param"] == "model"
    assert gw.h.records[-1].status == "error" and gw.h.records[-1].http_status == 404
    r = await gw.get("/v1/models/gpt-9", headers=gw.hdr)
    assert r.status_code == 404


async def test_models_list_adapters_with_parent(gw) -> None:
    r = await gw.get("/v1/models", headers=gw.hdr)
    assert r.status_code == 200
    assert_conforms(r.json(), "ListModelsResponse")
    by_id = {m["id"]: m for m in r.json()["data"]}
    assert by_id["recipes"]["parent"] == "royalty-tiny" and "parent" not in by_id["royalty-tiny"]
    r = await gw.get("/v1/models/legal", headers=gw.hdr)
    assert r.status_code == 200 and r.json()["parent"] == "royalty-tiny"
    assert_conforms(r.json(), "Model")


async def test_request_rate_limit_gives_429_with_retry_after() -> None:
    h = make_harness()
    key = await h.key(rpm=3)
    async with AsyncTestClient(app=h.app()) as c:
        auth = {"Authorization": f"Bearer {key}"}
        codes = [(await c.post("/v1/chat/completions", json=CHAT, headers=auth)) for _ in range(5)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
    assert int(codes[3].headers["retry-after"]) >= 1
    assert codes[3].json()["error"]["type"] == "rate_limit_error"
    assert_conforms(codes[3].json(), "ErrorResponse")


async def test_token_rate_limit() -> None:
    h = make_harness()
    key = await h.key(tpm=8)
    async with AsyncTestClient(app=h.app()) as c:
        auth = {"Authorization": f"Bearer {key}"}
        first = await c.post("/v1/chat/completions", json=CHAT, headers=auth)  # ~10 tokens
        second = await c.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert first.status_code == 200 and second.status_code == 429


async def test_engine_down_is_503_and_recorded(gw) -> None:
    gw.h.engine.alive = False
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    assert r.status_code == 503 and "retry-after" in r.headers
    assert_conforms(r.json(), "ErrorResponse")
    r = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=gw.hdr)
    assert r.status_code == 503
    assert {rec.status for rec in gw.h.records} == {"error"}
    # the engine is marked down; health reflects it
    assert (await gw.get("/healthz")).status_code == 503


async def test_concurrent_first_requests_load_an_adapter_once() -> None:
    h = make_harness(load_delay_s=0.05)
    key = await h.key()
    async with AsyncTestClient(app=h.app()) as c:
        auth = {"Authorization": f"Bearer {key}"}
        rs = await asyncio.gather(
            *[c.post("/v1/chat/completions", json=CHAT, headers=auth) for _ in range(20)]
        )
    assert all(r.status_code == 200 for r in rs)
    assert h.engine.load_calls == ["recipes"]


async def test_lru_eviction_within_slots() -> None:
    h = make_harness(slots=2)
    key = await h.key()
    async with AsyncTestClient(app=h.app()) as c:
        auth = {"Authorization": f"Bearer {key}"}
        for model in ["recipes", "astronomy", "recipes", "legal", "astronomy"]:
            r = await c.post("/v1/chat/completions", json={**CHAT, "model": model}, headers=auth)
            assert r.status_code == 200
    # astronomy was least recently used when legal arrived; then recipes when astronomy returned
    assert h.engine.unload_calls == ["astronomy", "recipes"]
    assert h.engine.load_calls == ["recipes", "astronomy", "legal", "astronomy"]
    assert sorted(h.engine.adapters) == ["astronomy", "legal"]


async def test_engine_forgetting_an_adapter_reloads_it(gw) -> None:
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    assert r.status_code == 200
    gw.h.engine.adapters.clear()  # engine restarted behind our back
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    assert r.status_code == 200 and gw.h.engine.load_calls == ["recipes", "recipes"]


def chat_scope(key: str) -> dict[str, object]:
    """The ASGI scope of a `POST /v1/chat/completions` with `key` (raw ASGI tests)."""
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("t", 80),
        "headers": [(b"authorization", f"Bearer {key}".encode()),
                    (b"content-type", b"application/json")],
    }  # fmt: skip


async def test_client_disconnect_mid_stream_records_generated_tokens() -> None:
    h = make_harness(token_delay_s=0.01)
    key = await h.key()
    app = h.app()
    body = json.dumps({**CHAT, "max_tokens": 200, "stream": True}).encode()
    sent = False
    got: list[bytes] = []
    disconnect = asyncio.Event()

    async def receive():  # type: ignore[no-untyped-def]
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message):  # type: ignore[no-untyped-def]
        if message["type"] == "http.response.body" and message.get("body"):
            got.append(message["body"])
            if len(got) >= 5:
                disconnect.set()

    await asyncio.wait_for(app(chat_scope(key), receive, send), 10)  # type: ignore[arg-type]
    await h.services.inference.drain()
    [rec] = h.records
    assert rec.status == "client_cancelled"
    assert 3 <= rec.completion_tokens < 200
    assert rec.prompt_tokens > 0  # counted by the engine's tokenizer after the hang-up
    assert h.engine.aborted == 1
    assert b"[DONE]" not in b"".join(got)


async def test_hang_up_while_the_client_blocks_a_send_closes_the_engine_stream() -> None:
    """A client that stops reading (its socket full) and then hangs up: the send waiting on
    it is cancelled, and the engine request is closed and recorded at once, not whenever
    the abandoned generator is collected."""
    h = make_harness(token_delay_s=0.005)
    key = await h.key()
    app = h.app()
    body = json.dumps({**CHAT, "max_tokens": 200, "stream": True}).encode()
    sent = False
    chunks = 0
    disconnect = asyncio.Event()
    never = asyncio.Event()

    async def receive():  # type: ignore[no-untyped-def]
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message):  # type: ignore[no-untyped-def]
        nonlocal chunks
        if message["type"] == "http.response.body" and message.get("body"):
            chunks += 1
            if chunks == 4:
                asyncio.get_running_loop().call_later(0.05, disconnect.set)
                await never.wait()  # blocked like a write to a full socket

    await asyncio.wait_for(app(chat_scope(key), receive, send), 10)  # type: ignore[arg-type]
    assert h.engine.aborted == 1  # closed by the response itself, before any collection
    await h.services.inference.drain()
    [rec] = h.records
    assert rec.status == "client_cancelled" and 1 <= rec.completion_tokens < 200


async def test_health_is_open_and_reflects_engines() -> None:
    h = make_harness()
    async with AsyncTestClient(app=h.app()) as c:
        assert (await c.get("/healthz")).status_code == 200
        h.services.pool.handles[0].healthy = False
        r = await c.get("/healthz")
        assert r.status_code == 503 and "x-request-id" in r.headers


def _unused(h: Harness) -> None:  # keeps the import used for type checkers
    del h


async def test_an_adapter_the_engine_refuses_is_503_not_500(gw) -> None:
    from serving.engine import EngineHTTPError

    async def refuse(name: str, path: str) -> None:
        raise EngineHTTPError(400, b'{"error": {"message": "bad adapter files"}}')

    gw.h.engine.load_adapter = refuse
    for stream in (False, True):
        r = await gw.post("/v1/chat/completions", json={**CHAT, "stream": stream}, headers=gw.hdr)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "adapter_unavailable"
    r = await gw.post(
        "/v1/chat/completions", json={**CHAT, "model": "royalty-tiny"}, headers=gw.hdr
    )
    assert r.status_code == 200  # the base model still serves
