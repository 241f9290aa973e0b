"""A request whose adapter finds every LoRA slot of its engine busy is answered, in bounded
time, with a 503 in OpenAI's error shape and a `Retry-After`; the request that holds the
slot finishes normally, and so does the next request once the slot is free. (Through the
inference service: the test client serialises concurrent requests.)"""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from support.gateway_harness import make_harness
from support.openai_schema import assert_conforms

from gateway.auth import KeyInfo
from gateway.errors import ServiceUnavailable
from gateway.inference import CallContext
from gateway.protocol.chat import ChatCompletionRequest

KEY = KeyInfo(key_id=1, account_id=1, account="acme", scopes=frozenset({"inference"}))


def chat(model: str, *, stream: bool = False) -> ChatCompletionRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    return msgspec.convert({**body, "stream": stream}, ChatCompletionRequest)


@pytest.mark.parametrize("stream", [False, True])
async def test_every_slot_busy_is_a_503_with_retry_after_not_a_hang(stream: bool) -> None:
    h = make_harness(slots=1, token_delay_s=0.05)
    h.services.pool.handles[0].placement.wait_s = 0.2
    svc = h.services.inference

    loaded = asyncio.Event()

    async def hold_recipes() -> int:
        frames = await svc.open_stream(CallContext("long", KEY, "chat.completions"),
                                       chat("recipes", stream=True))  # fmt: skip
        loaded.set()  # its first frame is out: "recipes" holds the slot
        return len([f async for f in frames])  # 20 tokens x 50 ms = 1 s on the only slot

    long = asyncio.create_task(hold_recipes())
    await asyncio.wait_for(loaded.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    ctx = CallContext("busy", KEY, "chat.completions")
    with pytest.raises(ServiceUnavailable) as busy:
        if stream:
            await svc.open_stream(ctx, chat("astronomy", stream=True))
        else:
            await svc.complete(ctx, chat("astronomy"))
    assert loop.time() - started < 0.9  # the wait's bound, not the holder's 1 s
    err = busy.value
    assert err.status == 503 and err.headers["Retry-After"].isdigit()
    assert err.code == "adapter_slots_busy"
    assert_conforms(msgspec.json.decode(err.body()), "ErrorResponse")
    assert await long > 20
    await svc.complete(CallContext("after", KEY, "chat.completions"), chat("astronomy"))
    await svc.drain()
    assert sorted((rec.request_id, rec.http_status) for rec in h.records) == [
        ("after", 200), ("busy", 503), ("long", 200),
    ]  # fmt: skip
