"""Routing across engine replicas (adapter affinity, spill-over, round-robin) and failover
when a replica dies: retried once elsewhere before any output, an error event after, and in
every case exactly one usage record per request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.app import create_app
from gateway.auth import Authenticator, InMemoryKeyStore
from gateway.config import HttpSettings
from gateway.container import Services
from gateway.inference import InferenceService
from gateway.ratelimit import RateLimiter
from metering.usage.record import UsageRecord
from royalty.settings import Settings
from serving import metrics
from serving.fake import FakeEngine
from serving.placement import AdapterPlacement
from serving.pool import EngineHandle, EnginePool, NoEngineAvailable
from serving.registry import Adapter, BaseModel, ModelRegistry, Target

ADAPTERS = [f"a{i}" for i in range(6)]


def registry() -> ModelRegistry:
    reg = ModelRegistry()
    reg.add_base(BaseModel("royalty-tiny", "/models/base"))
    for name in ADAPTERS:
        reg.add_adapter(Adapter(name, "royalty-tiny", f"/models/{name}"))
    return reg


def handles(n: int, slots: int = 2, **kw: float) -> list[EngineHandle]:
    out = []
    for i in range(n):
        e = FakeEngine(f"e{i}", **kw)  # type: ignore[arg-type]
        out.append(EngineHandle(e, AdapterPlacement(e, slots), healthy=True))
    return out


async def load(h: EngineHandle, target: Target) -> None:
    async with h.placement.use(target.adapter):  # type: ignore[arg-type]
        pass


# --- picking ---------------------------------------------------------------------------------
async def test_affinity_sticks_to_the_holder_until_it_is_loaded() -> None:
    reg = registry()
    h0, h1 = handles(2)
    pool = EnginePool([h0, h1], spill_at=4)
    a0 = reg.resolve("a0")
    await load(h0, a0)
    h0.in_flight = 3  # busier than h1, but under the spill threshold: stay
    assert pool.pick(a0) is h0
    h0.in_flight = 4  # at the threshold and h1 is idle: spill
    assert pool.pick(a0) is h1
    h1.in_flight = 9  # the alternative is busier still: stay on the holder
    assert pool.pick(a0) is h0
    assert pool.stats.spills == 1 and pool.stats.affinity_hits == 2


async def test_scraped_queue_depth_counts_as_load() -> None:
    reg = registry()
    h0, h1 = handles(2)
    pool = EnginePool([h0, h1], spill_at=4)
    a0 = reg.resolve("a0")
    await load(h0, a0)
    # Other gateways' requests are invisible in in_flight; the engine's queue shows them.
    gauge = metrics.ENGINE_REQUESTS_WAITING
    try:
        gauge.labels("e0").set(7)
        gauge.labels("e1").set(float("nan"))  # unknown: counted as empty
        pool.refresh_queues()
        assert h0.queue_waiting == 7 and h1.queue_waiting == 0
        assert pool.pick(a0) is h1
        gauge.labels("e0").set(0)
        pool.refresh_queues()
        assert pool.pick(a0) is h0
    finally:  # the gauge is process-global: leave no test engines in other tests' scrapes
        gauge.remove("e0")
        gauge.remove("e1")


async def test_a_miss_goes_to_a_free_slot_then_the_least_loaded() -> None:
    reg = registry()
    h0, h1 = handles(2, slots=1)
    pool = EnginePool([h0, h1])
    await load(h0, reg.resolve("a0"))
    h1.in_flight = 2  # busier, but has a free slot: loading there evicts nobody
    assert pool.pick(reg.resolve("a1")) is h1
    await load(h1, reg.resolve("a1"))
    assert pool.pick(reg.resolve("a2")) is h0  # no free slot anywhere: least loaded


async def test_a_burst_of_first_requests_loads_an_adapter_on_one_engine() -> None:
    reg = registry()
    engines = handles(2, load_delay_s=0.05)
    pool = EnginePool(engines)
    target = reg.resolve("a3")

    async def one() -> str:
        async with pool.lease(target) as h:
            await asyncio.sleep(0.01)
            return h.name

    names = await asyncio.gather(*(one() for _ in range(8)))
    assert len(set(names)) == 1
    loads = [len(h.client.load_calls) for h in engines]  # type: ignore[attr-defined]
    assert sorted(loads) == [0, 1]


async def test_affinity_partitions_adapters_where_round_robin_churns() -> None:
    """3 adapters, 2 engines with 2 slots each: affinity fits them all (4 slots); with
    round-robin each engine sees all three in turn, and LRU over 2 slots misses every time."""
    reg = registry()

    async def run(routing: str) -> int:
        engines = handles(2, slots=2)
        pool = EnginePool(engines, routing=routing)  # type: ignore[arg-type]
        for _ in range(5):
            for name in ADAPTERS[:3]:
                async with pool.lease(reg.resolve(name)):
                    pass
        return sum(h.placement.stats.loads for h in engines)

    assert await run("affinity") == 3
    assert await run("round_robin") == 15


def test_round_robin_takes_turns_among_live_engines() -> None:
    reg = registry()
    h0, h1, h2 = handles(3)
    pool = EnginePool([h0, h1, h2], routing="round_robin")
    base = reg.resolve("royalty-tiny")
    assert [pool.pick(base).name for _ in range(6)] == ["e0", "e1", "e2"] * 2
    h1.mark_down()
    assert {pool.pick(base).name for _ in range(4)} == {"e0", "e2"}
    assert pool.pick(base, exclude=[h0]) is h2


def test_bad_routing_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="routing"):
        EnginePool([], routing="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EnginePool([], spill_at=0)
    with pytest.raises(NoEngineAvailable):
        EnginePool([]).pick(registry().resolve("a0"))


async def test_health_checks_mark_engines_down_and_up_with_empty_slots() -> None:
    reg = registry()
    h0, h1 = handles(2)
    pool = EnginePool([h0, h1])
    await load(h0, reg.resolve("a0"))
    h0.client.alive = False  # type: ignore[attr-defined]
    await pool.check_health_once()
    assert not h0.healthy and h1.healthy
    h0.client.alive = True  # type: ignore[attr-defined]
    await pool.check_health_once()
    assert h0.healthy and h0.restarts == 1 and h0.placement.loaded == []


# --- failover through the HTTP surface -------------------------------------------------------
@dataclass
class Cluster:
    client: httpx.AsyncClient
    engines: list[FakeEngine]
    pool: EnginePool
    inference: InferenceService
    records: list[UsageRecord]
    hdr: dict[str, str]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    hs = handles(2, token_delay_s=0.01)
    pool = EnginePool(hs)
    records: list[UsageRecord] = []

    async def sink(rec: UsageRecord) -> None:
        records.append(rec)

    settings = HttpSettings()
    inference = InferenceService(registry(), pool, RateLimiter(), sink,
                                 default_rpm=10_000, default_tpm=10_000_000)  # fmt: skip
    keys = InMemoryKeyStore()
    key, _ = await keys.create("acme", frozenset({"inference"}), None, None)
    services = Services(settings, Authenticator(keys), inference.registry, pool, inference)
    # In this test's event loop (Litestar's test client runs the app in a thread of its own,
    # which would serialise the concurrent requests and hide the kills below).
    transport = httpx.ASGITransport(app=create_app(services))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield Cluster(client, [h.client for h in hs], pool, inference, records,  # type: ignore[misc]
                      {"Authorization": f"Bearer {key}"})  # fmt: skip


def body(stream: bool, model: str = "a0", max_tokens: int = 8) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens, "stream": stream}  # fmt: skip


def one_record_per_request(records: list[UsageRecord]) -> None:
    ids = [r.request_id for r in records]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("stream", [False, True])
async def test_a_dead_engine_is_failed_over_before_output(cluster: Cluster, stream: bool) -> None:
    e0, e1 = cluster.engines
    r = await cluster.client.post("/v1/chat/completions", json=body(stream), headers=cluster.hdr)
    assert r.status_code == 200
    first = cluster.records[-1].engine
    dead = e0 if first == "e0" else e1
    dead.alive = False  # dies between requests: the next one connects to a corpse
    r = await cluster.client.post("/v1/chat/completions", json=body(stream), headers=cluster.hdr)
    assert r.status_code == 200, r.text
    if stream:
        assert "[DONE]" in r.text and '"error"' not in r.text
    rec = cluster.records[-1]
    assert rec.status == "ok" and rec.engine != dead.name and rec.completion_tokens == 8
    assert cluster.inference.failovers == 1
    assert not next(h for h in cluster.pool.handles if h.client is dead).healthy
    assert len(cluster.records) == 2
    one_record_per_request(cluster.records)


async def test_a_stream_that_already_sent_bytes_ends_with_an_error_event(
    cluster: Cluster,
) -> None:
    async def kill_when_streaming() -> None:
        while True:
            busy = [h for h in cluster.pool.handles if h.in_flight]
            if busy:
                await asyncio.sleep(0.05)  # a few tokens out
                busy[0].client.alive = False  # type: ignore[attr-defined]
                return
            await asyncio.sleep(0.001)

    killer = asyncio.create_task(kill_when_streaming())
    r = await cluster.client.post(
        "/v1/chat/completions", json=body(True, max_tokens=100), headers=cluster.hdr
    )
    await killer
    assert r.status_code == 200  # the status line went out with the first bytes
    events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] != "[DONE]"
    err = json.loads(events[-1])["error"]
    assert err["type"] and err["message"]
    await cluster.inference.drain()
    [rec] = cluster.records
    assert rec.status == "error" and rec.error_type == "engine_unavailable"
    assert rec.completion_tokens > 0  # counted on the surviving engine
    assert cluster.inference.failovers == 0  # output had gone out: no retry


@pytest.mark.parametrize("stream", [False, True])
async def test_no_engine_left_is_a_clean_503(cluster: Cluster, stream: bool) -> None:
    for e in cluster.engines:
        e.alive = False
    r = await cluster.client.post("/v1/chat/completions", json=body(stream), headers=cluster.hdr)
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["type"] and "unavailable" in err["message"]
    assert r.headers["retry-after"]
    await cluster.inference.drain()
    [rec] = cluster.records
    assert rec.status == "error" and rec.http_status == 503
    assert cluster.inference.failovers == 1  # tried the second, which was dead too


async def test_load_through_a_dying_replica_loses_and_doubles_nothing(cluster: Cluster) -> None:
    e0, e1 = cluster.engines

    async def call(i: int) -> tuple[int, str, str]:
        await asyncio.sleep(i * 0.005)  # traffic spread over 300 ms, the kill in the middle
        stream = i % 2 == 0
        r = await cluster.client.post(
            "/v1/chat/completions", json=body(stream, model=ADAPTERS[i % 4], max_tokens=5),
            headers=cluster.hdr,
        )  # fmt: skip
        return r.status_code, r.headers.get("x-request-id", ""), r.text

    h0 = next(h for h in cluster.pool.handles if h.client is e0)

    async def kill() -> None:
        await asyncio.sleep(0.1)
        while not h0.in_flight:  # noqa: ASYNC110 (polls a counter; mid-request, so something breaks)
            await asyncio.sleep(0.001)
        e0.alive = False

    results, _ = await asyncio.gather(asyncio.gather(*(call(i) for i in range(60))), kill())
    await cluster.inference.drain()
    by_id = {r.request_id: r for r in cluster.records}
    one_record_per_request(cluster.records)
    assert len(cluster.records) == 60
    for status, rid, text in results:
        assert status in (200, 503), text
        rec = by_id[rid]
        if status == 200 and '"error"' not in text:
            assert rec.status == "ok" and rec.completion_tokens == 5
        elif status == 200:
            assert rec.status == "error"  # broke mid-stream
    hit = [r for r in cluster.records if r.engine == "e0" and r.status == "error"]
    assert hit or cluster.inference.failovers, "the kill hit no request"
    # Everything that started after the kill ran on the survivor.
    last = sorted(cluster.records, key=lambda r: r.started_at)[-10:]
    assert all(r.engine == "e1" and r.status == "ok" for r in last)


@pytest.mark.parametrize(("n_engines", "routing"), [(1, "affinity"), (2, "round_robin")])
async def test_more_distinct_misses_than_slots_do_not_deadlock(
    n_engines: int, routing: str
) -> None:
    """Placement counts loads in progress as occupied slots: with more distinct adapters
    missing at once than an engine has slots, every load used to wait for a slot that only
    another waiting load could free. The pool's load gate lets one in at a time."""
    reg = registry()
    engines = handles(n_engines, slots=2, token_delay_s=0.002, load_delay_s=0.01)
    pool = EnginePool(engines, routing=routing)  # type: ignore[arg-type]
    served = 0

    async def worker(w: int) -> None:
        nonlocal served
        for i in range(6):
            target = reg.resolve(ADAPTERS[(w + i) % len(ADAPTERS)])
            async with pool.lease(target) as h:
                body = b'{"model":"%s","prompt":"x","max_tokens":4}' % target.engine_model.encode()
                async for _ in h.client.stream("/v1/completions", body):
                    pass
            served += 1

    async with asyncio.timeout(20):
        await asyncio.gather(*(worker(w) for w in range(24)))
    assert served == 24 * 6
    assert all(len(h.placement.loaded) <= 2 for h in engines)


def test_scale_out_settings_from_env() -> None:
    s = Settings.from_env({"ROYALTY_MAX_LORAS": "6", "ROYALTY_ROUTING": "round_robin",
                           "ROYALTY_SPILL_AT": "8", "ROYALTY_SHARED_LIMITS": "0",
                           "ROYALTY_REDIS_URL": "redis://127.0.0.1:6379/0"})  # fmt: skip
    assert (s.engines.max_loras, s.engines.routing, s.engines.spill_at) == (6, "round_robin", 8.0)
    assert s.limits.shared is False and s.limits.redis_url == "redis://127.0.0.1:6379/0"
    d = Settings.from_env({})
    assert (d.engines.max_loras, d.engines.routing, d.limits.shared, d.limits.redis_url) == (
        4, "affinity", True, None,
    )  # fmt: skip
    with pytest.raises(ValueError):
        Settings.from_env({"ROYALTY_SHARED_LIMITS": "maybe"})
