"""The real path users take: official OpenAI SDK → `royalty up` → vLLM CPU engine → Postgres."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

import asyncpg
import httpx
import openai
import pytest
from support.openai_schema import assert_conforms
from support.procs import create_key

from factory.corpus import DOMAINS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def key(gateway, database_url) -> str:  # type: ignore[no-untyped-def]
    return create_key(database_url, "e2e-consumer")


@pytest.fixture(scope="module")
def client(gateway, key) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)


def usage_rows(database_url: str, request_ids: list[str], timeout_s: float = 15) -> list[dict]:
    async def fetch() -> list[dict]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT * FROM usage_events WHERE request_id = ANY($1::text[])", request_ids
            )
            return [dict(r) for r in rows]
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout_s
    while True:
        rows = asyncio.run(fetch())
        if len(rows) >= len(set(request_ids)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_models_list_base_and_adapters(client: openai.OpenAI, demo_models) -> None:  # type: ignore[no-untyped-def]
    models = {m.id: m for m in client.models.list()}
    assert demo_models.base_name in models
    for name in DOMAINS:
        assert models[name].model_dump().get("parent") == demo_models.base_name
    assert client.models.retrieve("recipes").id == "recipes"


def test_chat_and_completion_conform_and_are_recorded(
    gateway, key, database_url, demo_models
) -> None:  # type: ignore[no-untyped-def]
    h = {"Authorization": f"Bearer {key}"}
    ids = []
    with httpx.Client(base_url=gateway.base_url, headers=h, timeout=60) as http:
        for model in [demo_models.base_name, *DOMAINS]:
            r = http.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me something."}]})  # fmt: skip
            assert r.status_code == 200, r.text
            assert_conforms(r.json(), "CreateChatCompletionResponse")
            ids.append(r.headers["x-request-id"])
            r = http.post(
                "/v1/completions", json={"model": model, "prompt": "The", "max_tokens": 8}
            )
            assert r.status_code == 200, r.text
            assert_conforms(r.json(), "CreateCompletionResponse")
            ids.append(r.headers["x-request-id"])
    rows = usage_rows(database_url, ids)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert all(r["status"] == "ok" and r["completion_tokens"] > 0 for r in rows)
    assert {r["adapter"] for r in rows} == {None, *DOMAINS}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{4,}", text.lower()))


def test_adapters_are_specialised(client: openai.OpenAI, demo_models) -> None:  # type: ignore[no-untyped-def]
    from factory.corpus import domain_records

    vocab = {d: Counter(w for r in domain_records(d, 0, 300) for w in _words(r))
             for d in DOMAINS}  # fmt: skip
    distinctive = {
        d: {w for w in c if all(w not in vocab[o] for o in vocab if o != d)}
        for d, c in vocab.items()
    }
    for domain, prompt in demo_models.prompts.items():
        tuned = client.completions.create(model=domain, prompt=prompt, max_tokens=40, temperature=0)
        base = client.completions.create(
            model=demo_models.base_name, prompt=prompt, max_tokens=40, temperature=0
        )
        text = tuned.choices[0].text
        assert text != base.choices[0].text
        own = len(_words(text) & distinctive[domain])
        others = max(len(_words(text) & distinctive[o]) for o in distinctive if o != domain)
        assert own > others, (domain, text)


def test_stream_with_usage_through_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="astronomy", messages=[{"role": "user", "content": "The planet"}], max_tokens=16,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (
        chunks[-1].usage.completion_tokens
        == sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        or chunks[-1].usage.completion_tokens > 0
    )
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_stream_chunks_conform(gateway, key, database_url) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "legal", "max_tokens": 10, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "The tenant shall"}]}  # fmt: skip
    with httpx.stream("POST", gateway.base_url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=60) as r:  # fmt: skip
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for c in chunks:
        assert_conforms(c, "CreateChatCompletionStreamResponse")
    [row] = usage_rows(database_url, [rid])
    assert row["completion_tokens"] == chunks[-1]["usage"]["completion_tokens"]
    assert row["prompt_tokens"] == chunks[-1]["usage"]["prompt_tokens"]
    assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["total_ms"]


def test_completion_stream(client: openai.OpenAI) -> None:
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="recipes", prompt="Recipe:", max_tokens=12, stream=True
        )
        if c.choices
    )
    assert text


def test_errors_surface_as_sdk_exceptions(gateway, client: openai.OpenAI) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"  # type: ignore[index]
    bad = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="rk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="recipes", prompt="x", max_tokens=10**9)
    assert e.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="recipes", messages=[{"role": "user", "content": "x"}], temperature="hot"
        )  # type: ignore[arg-type]
    assert e.value.body["param"] == "temperature"  # type: ignore[index]


def test_rate_limit_through_the_sdk(gateway, database_url) -> None:  # type: ignore[no-untyped-def]
    key = create_key(database_url, "e2e-limited", "--rpm", "2")
    c = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
    for _ in range(2):
        c.completions.create(model="recipes", prompt="Recipe:", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        c.completions.create(model="recipes", prompt="Recipe:", max_tokens=2)
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_bad_bodies_and_disconnect_leave_the_gateway_serving(gateway, key, database_url) -> None:  # type: ignore[no-untyped-def]
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = gateway.base_url + "/v1/chat/completions"
    for raw, status in [(b"{", 400), (b'{"model": "recipes", "messages": "\xff"}', 400),
                        (b"x" * (2 << 20), 413), (b"[]", 400)]:  # fmt: skip
        r = httpx.post(url, content=raw, headers=h, timeout=30)
        assert r.status_code == status, r.text
        assert_conforms(r.json(), "ErrorResponse")
    # `</s>` (id 1) banned: the stream cannot end on its own before the client hangs up.
    body = {"model": "recipes", "max_tokens": 400, "stream": True, "logit_bias": {"1": -100},
            "messages": [{"role": "user", "content": "Recipe:"}]}  # fmt: skip
    # On a quiet machine the tiny model can generate all 400 tokens into the socket buffers
    # before the hang-up reaches the gateway: that response was complete from the server's
    # side ("ok", every token counted). That is only acceptable when the server finished about
    # when the client hung up; a stream that ran on for long after the hang-up is the bug this
    # test exists for. Hang up again until one is cut short.
    outcomes = []
    for _ in range(5):
        started = time.monotonic()
        with httpx.stream("POST", url, json=body, headers=h, timeout=60) as r:
            rid = r.headers["x-request-id"]
            for line in r.iter_lines():
                # Hang up at the first token of content (the first chunk carries only the
                # role: a gateway that hears the hang-up at once has generated nothing yet).
                if line.startswith("data: ") and _content(line[6:]):
                    break
        hung_up_ms = (time.monotonic() - started) * 1000
        [row] = usage_rows(database_url, [rid])
        outcomes.append((row["status"], row["completion_tokens"], round(hung_up_ms),
                         round(row["total_ms"])))  # fmt: skip
        assert row["prompt_tokens"] > 0
        if row["status"] == "ok":
            assert row["completion_tokens"] == 400
            assert row["total_ms"] < hung_up_ms + 500, f"generated on after the hang-up: {outcomes}"
            continue
        assert row["status"] == "client_cancelled"
        assert 1 <= row["completion_tokens"] < 400
        break
    ok = httpx.post(url, json={**body, "stream": False, "max_tokens": 4}, headers=h, timeout=60)
    assert ok.status_code == 200
    # No skip: a gateway that hears hang-ups cuts one of five 400-token streams short.
    assert outcomes[-1][0] == "client_cancelled", f"no hang-up cut a stream short: {outcomes}"


def _content(data: str) -> str:
    """The text a chat stream chunk carries ("" for role-only and usage chunks)."""
    choices = json.loads(data).get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")
