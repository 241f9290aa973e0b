"""serving.failover over fake engines: one retry, elsewhere when an engine cannot be reached,
on the same engine after reloading an adapter it forgot, never once the caller committed; the
same rules for a call and for a stream."""

from __future__ import annotations

from contextlib import aclosing

import msgspec
import pytest

from serving.engine import EngineHTTPError, EngineUnavailable
from serving.failover import Failover
from serving.fake import FakeEngine
from serving.placement import AdapterPlacement
from serving.pool import EngineHandle, EnginePool, NoEngineAvailable
from serving.registry import Adapter, BaseModel, ModelRegistry, Target

CHAT = "/v1/chat/completions"


def registry() -> ModelRegistry:
    reg = ModelRegistry()
    reg.add_base(BaseModel("royalty-tiny", "/models/base"))
    reg.add_base(BaseModel("elsewhere", "/models/elsewhere"))
    reg.add_adapter(Adapter("legal", "royalty-tiny", "/models/legal"))
    return reg


def cluster(n: int, **kw: float) -> tuple[EnginePool, list[FakeEngine]]:
    engines = [FakeEngine(f"e{i}", **kw) for i in range(n)]  # type: ignore[arg-type]
    handles = [EngineHandle(e, AdapterPlacement(e, 2), healthy=True) for e in engines]
    return EnginePool(handles, routing="round_robin"), engines


def body(target: Target, *, stream: bool = False, max_tokens: int = 4) -> bytes:
    doc = {"model": target.engine_model, "messages": [{"role": "user", "content": "hi"}],
           "max_tokens": max_tokens, "stream": stream}  # fmt: skip
    return msgspec.json.encode(doc)


class Failovers:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, handle: EngineHandle, e: EngineUnavailable) -> None:
        self.seen.append(handle.name)


async def test_a_call_runs_on_one_engine_when_nothing_fails() -> None:
    pool, _ = cluster(2)
    target = registry().resolve("royalty-tiny")
    told = Failovers()
    f = Failover(pool, target, on_failover=told)
    raw = await f.call(lambda h: h.client.post_json(CHAT, body(target)))
    assert msgspec.json.decode(raw)["object"] == "chat.completion"
    assert f.handle is not None and f.failed == [] and told.seen == []
    assert all(h.in_flight == 0 for h in pool.handles)


async def test_an_unreachable_engine_is_left_for_another_once() -> None:
    pool, engines = cluster(2)
    engines[0].alive = False
    target = registry().resolve("royalty-tiny")
    told = Failovers()
    f = Failover(pool, target, on_failover=told)
    ran_on: list[str] = []

    async def run(h: EngineHandle) -> bytes:
        ran_on.append(h.name)
        return await h.client.post_json(CHAT, body(target))

    await f.call(run)
    assert ran_on == ["e0", "e1"] and told.seen == ["e0"]
    assert not pool.handles[0].healthy  # the pool marked it down
    assert f.handle is pool.handles[1]


async def test_one_retry_in_all() -> None:
    pool, engines = cluster(3)
    for e in engines:
        e.alive = False
    told = Failovers()
    f = Failover(pool, registry().resolve("royalty-tiny"), on_failover=told)
    with pytest.raises(EngineUnavailable):
        await f.call(lambda h: h.client.post_json(CHAT, b"{}"))
    assert told.seen == ["e0"]  # the second failure is raised, not retried
    assert sum(h.healthy for h in pool.handles) == 1  # the third was never tried


async def test_no_engine_for_the_base_is_raised_as_it_is() -> None:
    pool, _ = cluster(1)
    pool.handles[0].healthy = False
    f = Failover(pool, registry().resolve("royalty-tiny"))
    with pytest.raises(NoEngineAvailable):
        await f.call(lambda h: h.client.post_json(CHAT, b"{}"))
    assert f.handle is None


async def test_an_adapter_the_engine_forgot_is_reloaded_on_the_same_engine() -> None:
    pool, (engine,) = cluster(1)
    target = registry().resolve("legal")
    await Failover(pool, target).call(lambda h: h.client.post_json(CHAT, body(target)))
    engine.adapters.clear()  # restarted behind our back: runtime-loaded adapters are gone
    told = Failovers()
    raw = await Failover(pool, target, on_failover=told).call(
        lambda h: h.client.post_json(CHAT, body(target))
    )
    assert msgspec.json.decode(raw)["model"] == target.engine_model
    assert engine.load_calls == ["legal", "legal"] and told.seen == []


async def test_a_404_without_an_adapter_is_the_engines_answer() -> None:
    pool, (engine,) = cluster(1)
    target = registry().resolve("elsewhere")  # a base this engine does not serve
    with pytest.raises(EngineHTTPError) as e:
        await Failover(pool, target).call(lambda h: h.client.post_json(CHAT, body(target)))
    assert e.value.status == 404 and engine.load_calls == []


async def test_a_stream_starts_over_elsewhere_before_anything_was_sent() -> None:
    pool, engines = cluster(2)
    engines[0].alive = False
    target = registry().resolve("royalty-tiny")
    told = Failovers()
    f = Failover(pool, target, on_failover=told)
    req = body(target, stream=True, max_tokens=3)
    async with aclosing(f.stream(lambda h: h.client.stream(CHAT, req))) as chunks:
        got = [msgspec.json.decode(c) async for c in chunks]
    assert len(got) == 1 + 3  # the role chunk, then one per token
    assert told.seen == ["e0"] and f.handle is pool.handles[1]


async def test_a_stream_is_never_retried_once_committed() -> None:
    pool, engines = cluster(2)
    target = registry().resolve("royalty-tiny")
    told = Failovers()
    f = Failover(pool, target, on_failover=told)
    req = body(target, stream=True, max_tokens=10)
    got = 0
    with pytest.raises(EngineUnavailable):
        async with aclosing(f.stream(lambda h: h.client.stream(CHAT, req))) as chunks:
            async for _ in chunks:
                got += 1
                f.commit()  # the chunk reached the client
                if got == 2:
                    engines[0].alive = False  # dies mid-stream
    assert got == 2 and told.seen == []
    assert not pool.handles[0].healthy and pool.handles[1].in_flight == 0


async def test_closing_a_stream_closes_the_engines_stream_at_once() -> None:
    pool, (engine,) = cluster(1)
    target = registry().resolve("royalty-tiny")
    f = Failover(pool, target)
    req = body(target, stream=True, max_tokens=50)
    async with aclosing(f.stream(lambda h: h.client.stream(CHAT, req))) as chunks:
        async for _ in chunks:
            break  # the client went away
    assert engine.aborted == 1 and pool.handles[0].in_flight == 0


async def test_a_dead_engine_has_a_stand_in_of_the_same_base_for_counting() -> None:
    pool, engines = cluster(2)
    target = registry().resolve("royalty-tiny")
    f = Failover(pool, target, retries=0)
    engines[0].alive = False
    with pytest.raises(EngineUnavailable):
        await f.call(lambda h: h.client.post_json(CHAT, body(target)))
    dead = f.handle
    assert dead is pool.handles[0] and not dead.healthy
    assert f.stand_in(dead) is pool.handles[1]
    pool.handles[1].healthy = False
    assert f.stand_in(dead) is dead  # no other: the dead one all the same
