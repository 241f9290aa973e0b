"""`/metrics`: counts move by exactly the traffic sent, labels stay bounded, the exposition
parses, engine queues are scraped over real HTTP, and several processes aggregate.

Metric objects are process-global (as in production), so every test compares a snapshot
taken before its traffic with one taken after.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import subprocess
import sys
import textwrap
from collections import Counter as Multiset
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from support.gateway_harness import make_harness
from support.usage_events import usage_event

from gateway.metrics import InferenceMetrics, MetricsSampler, parse_vllm_queue
from metering import metrics as metering_metrics
from metering.usage.log import UsageLog
from metering.usage.record import UsageRecord
from metering.usage.shipper import UsageShipper
from metering.usage.store import InMemoryUsageStore
from serving.engine import VLLMHttpEngine
from serving.placement import AdapterPlacement
from serving.pool import EngineHandle, EnginePool
from serving.registry import Adapter, BaseModel, ModelRegistry

ROOT = Path(__file__).resolve().parents[2]
Sample = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> dict[Sample, float]:
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def delta(before: dict[Sample, float], after: dict[Sample, float], name: str, **labels: str):
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def series_of(snapshot: dict[Sample, float], name: str) -> set[frozenset[tuple[str, str]]]:
    return {labels for (n, labels) in snapshot if n == name}


@pytest.fixture
async def gw():
    h = make_harness(slots=1)
    async with AsyncTestClient(app=h.app()) as client:
        client.h = h  # type: ignore[attr-defined]
        key = await h.key()
        client.hdr = {"Authorization": f"Bearer {key}"}  # type: ignore[attr-defined]
        yield client


async def scrape(client) -> dict[Sample, float]:  # type: ignore[no-untyped-def]
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    return parse(r.text)


def chat(model: str, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        **extra,
    }


async def test_requests_tokens_latency_and_ttft_move_by_the_traffic_sent(gw) -> None:
    before = await scrape(gw)
    for _ in range(3):
        assert (
            await gw.post("/v1/chat/completions", json=chat("recipes"), headers=gw.hdr)
        ).status_code == 200
    for _ in range(2):
        r = await gw.post(
            "/v1/completions", json={"model": "royalty-tiny", "prompt": "The", "max_tokens": 4},
            headers=gw.hdr,
        )  # fmt: skip
        assert r.status_code == 200
    stream = chat("astronomy", stream=True, stream_options={"include_usage": True})
    assert (await gw.post("/v1/chat/completions", json=stream, headers=gw.hdr)).status_code == 200
    assert (
        await gw.post("/v1/chat/completions", json=chat("nope"), headers=gw.hdr)
    ).status_code == 404
    assert (await gw.post("/v1/chat/completions", json=chat("recipes"))).status_code == 401
    after = await scrape(gw)

    req = "royalty_inference_requests_total"
    assert (
        delta(
            before,
            after,
            req,
            endpoint="chat.completions",
            model="recipes",
            status="200",
            outcome="ok",
        )
        == 3
    )
    assert (
        delta(
            before,
            after,
            req,
            endpoint="completions",
            model="royalty-tiny",
            status="200",
            outcome="ok",
        )
        == 2
    )
    assert (
        delta(
            before,
            after,
            req,
            endpoint="chat.completions",
            model="astronomy",
            status="200",
            outcome="ok",
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            req,
            endpoint="chat.completions",
            model="_unknown",
            status="404",
            outcome="error",
        )
        == 1
    )

    # Tokens equal what the usage records say, per base model and adapter.
    by = Multiset[tuple[str, str, str]]()
    for rec in gw.h.records:
        by[(rec.base_model, rec.adapter or "", "prompt")] += rec.prompt_tokens
        by[(rec.base_model, rec.adapter or "", "completion")] += rec.completion_tokens
    assert by[("royalty-tiny", "recipes", "completion")] == 18
    for (base, adapter, direction), n in by.items():
        if base:
            got = delta(
                before,
                after,
                "royalty_tokens_total",
                base_model=base,
                adapter=adapter,
                direction=direction,
            )
            assert got == n, (base, adapter, direction)

    # One latency observation per successful request; the sum is their total time.
    lat = "royalty_inference_duration_seconds_count"
    assert delta(before, after, lat, endpoint="chat.completions", model="recipes") == 3
    assert delta(before, after, lat, endpoint="completions", model="royalty-tiny") == 2
    total_s = sum(r.total_ms for r in gw.h.records if r.model == "recipes") / 1000
    got_s = delta(
        before,
        after,
        "royalty_inference_duration_seconds_sum",
        endpoint="chat.completions",
        model="recipes",
    )
    assert got_s == pytest.approx(total_s, rel=1e-6)
    ttft = "royalty_inference_ttft_seconds_count"
    assert delta(before, after, ttft, endpoint="chat.completions", model="astronomy") == 1

    http = "royalty_http_requests_total"
    assert (
        delta(before, after, http, route="/v1/chat/completions", method="POST", status="200") == 4
    )
    assert (
        delta(before, after, http, route="/v1/chat/completions", method="POST", status="401") == 1
    )
    assert delta(before, after, http, route="/v1/completions", method="POST", status="200") == 2


async def test_adapter_loads_evictions_and_load_time(gw) -> None:
    before = await scrape(gw)
    for model in ("recipes", "astronomy", "recipes", "recipes"):  # one slot: load, evict, load
        assert (
            await gw.post("/v1/chat/completions", json=chat(model), headers=gw.hdr)
        ).status_code == 200
    after = await scrape(gw)
    loads = "royalty_adapter_loads_total"
    evictions = "royalty_adapter_evictions_total"
    stats = gw.h.services.pool.handles[0].placement.stats
    assert (
        delta(before, after, loads, adapter="recipes")
        + delta(before, after, loads, adapter="astronomy")
        == 3
    )
    assert delta(before, after, evictions, adapter="recipes") == 1
    assert delta(before, after, "royalty_adapter_load_seconds_count") == 3
    assert stats.loads >= 3
    assert after[("royalty_engine_adapters_loaded", frozenset({("engine", "fake")}))] == 1


async def test_metrics_needs_no_key_and_ignores_a_bad_one(gw) -> None:
    for headers in ({}, {"Authorization": "Bearer rk-not-a-key"}):
        r = await gw.get("/metrics", headers=headers)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")


async def test_label_cardinality_stays_bounded_with_many_keys_models_and_paths(gw) -> None:
    before = await scrape(gw)
    n = 60
    keys = [await gw.h.key(account=f"acct-{i}") for i in range(n)]
    for i, key in enumerate(keys):
        hdr = {"Authorization": f"Bearer {key}"}
        await gw.post("/v1/chat/completions", json=chat(f"garbage-model-{i}"), headers=hdr)
        await gw.post("/v1/chat/completions", json=chat("recipes"), headers=hdr)
        await gw.get(f"/v1/no-such-route-{i}", headers=hdr)
        await gw.request(f"BREW{i}", "/v1/models", headers=hdr)
    after = await scrape(gw)
    text = (await gw.get("/metrics")).text
    # No key, account, request id or unregistered model name anywhere in the exposition.
    for i, key in enumerate(keys[:5]):
        assert key not in text and f"acct-{i}" not in text and f"garbage-model-{i}" not in text
    assert "req_" not in text and "no-such-route" not in text and "BREW" not in text
    for name in (
        "royalty_inference_requests_total",
        "royalty_http_requests_total",
        "royalty_tokens_total",
    ):
        grown = series_of(after, name) - series_of(before, name)
        assert len(grown) <= 4, (name, grown)
    assert delta(before, after, "royalty_inference_requests_total", endpoint="chat.completions",
                 model="_unknown", status="404", outcome="error") == n  # fmt: skip
    assert (
        delta(
            before,
            after,
            "royalty_http_requests_total",
            route="unmatched",
            method="GET",
            status="404",
        )
        == n
    )


async def test_exposition_parses_and_every_family_is_documented(gw) -> None:
    await gw.post("/v1/chat/completions", json=chat("recipes"), headers=gw.hdr)
    text = (await gw.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ours = {n: f for n, f in families.items() if n.startswith("royalty_")}
    expected = {
        "royalty_http_requests", "royalty_inference_requests", "royalty_inference_duration_seconds",
        "royalty_inference_ttft_seconds", "royalty_tokens", "royalty_adapter_loads",
        "royalty_adapter_evictions", "royalty_adapter_load_seconds", "royalty_engine_up",
        "royalty_engine_in_flight_requests", "royalty_engine_requests_waiting",
        "royalty_engine_requests_running", "royalty_usage_log_pending_records",
        "royalty_usage_log_oldest_unshipped_age_seconds", "royalty_attribution_seconds",
        "royalty_attribution_queue_depth", "royalty_credits_minted_microcredits",
        "royalty_holds_placed", "royalty_penalties", "royalty_ledger_imbalance_microcredits",
    }  # fmt: skip
    assert expected <= set(ours), expected - set(ours)
    for f in ours.values():
        assert f.documentation, f.name
        assert f.type in ("counter", "gauge", "histogram"), f.name


def test_payee_kind_and_stage_labels_are_bounded() -> None:
    before = parse_registry()
    metering_metrics.credits_minted("contributor", 700)
    metering_metrics.credits_minted("acct-12345", 5)  # not a kind: folded into "other"
    metering_metrics.attribution_observed("span", 0.001)
    metering_metrics.attribution_observed("user-42", 0.001)
    with pytest.raises(ValueError):
        metering_metrics.credits_minted("contributor", -1)
    after = parse_registry()
    name = "royalty_credits_minted_microcredits_total"
    assert delta(before, after, name, payee_kind="contributor") == 700
    assert delta(before, after, name, payee_kind="other") == 5
    assert not any("acct-12345" in v or "user-42" in v for (_, ls) in after for _, v in ls)


def parse_registry() -> dict[Sample, float]:
    from gateway.metrics import exposition

    return parse(exposition().decode())


VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="royalty-tiny"} 2.0
vllm:num_requests_running{engine="1",model_name="royalty-tiny"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="royalty-tiny"} 7.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="royalty-tiny"} 123.0
"""


async def test_engine_queue_is_scraped_from_vllm_metrics_over_http() -> None:
    state = {"status": 200, "body": VLLM_METRICS}

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(status=state["status"], text=state["body"])

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = VLLMHttpEngine(f"http://127.0.0.1:{port}", name="vllm-a")
    dead = VLLMHttpEngine("http://127.0.0.1:9", name="vllm-dead")  # nothing listens on 9
    pool = EnginePool([
        EngineHandle(client, AdapterPlacement(client, 2), healthy=True),
        EngineHandle(dead, AdapterPlacement(dead, 2), healthy=False),
    ])  # fmt: skip
    sampler = MetricsSampler(pool, scrape_timeout_s=1.0)
    try:
        await sampler.sample_once()
        s = parse_registry()
        a, d = frozenset({("engine", "vllm-a")}), frozenset({("engine", "vllm-dead")})
        assert s[("royalty_engine_requests_running", a)] == 3
        assert s[("royalty_engine_requests_waiting", a)] == 7
        assert s[("royalty_engine_scrape_ok", a)] == 1 and s[("royalty_engine_up", a)] == 1
        assert s[("royalty_engine_scrape_ok", d)] == 0 and s[("royalty_engine_up", d)] == 0
        assert math.isnan(s[("royalty_engine_requests_waiting", d)])

        # An engine whose /metrics breaks reports "unknown", not its last queue depth.
        state["status"] = 500
        await sampler.sample_once()
        s = parse_registry()
        assert s[("royalty_engine_scrape_ok", a)] == 0
        assert math.isnan(s[("royalty_engine_requests_waiting", a)])
        state.update(status=200, body="# nothing from vLLM here\nother_metric 1\n")
        await sampler.sample_once()
        assert parse_registry()[("royalty_engine_scrape_ok", a)] == 0
    finally:
        await sampler.stop()
        await pool.close()
        await runner.cleanup()


def test_parse_vllm_queue_rejects_garbage() -> None:
    assert parse_vllm_queue(VLLM_METRICS) == (3.0, 7.0)
    with pytest.raises(ValueError):
        parse_vllm_queue("up 1\n")


def record(i: int, **kw: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "adapter": None, "base_model": "royalty-tiny", "total_ms": 12.0, "ttft_ms": 4.0, **kw
    }  # fmt: skip
    return usage_event(
        f"req_metrics_{os.getpid()}_{i}", account_id=1, started_at=dt.datetime.now(dt.UTC),
        prompt_tokens=3, completion_tokens=5, **fields,
    )  # fmt: skip


async def test_usage_log_depth_and_oldest_age_then_shipped(tmp_path: Path) -> None:
    harness = make_harness()
    usage_log = await UsageLog.open(tmp_path / "log")
    sampler = MetricsSampler(harness.services.pool, usage_log)
    shipper = UsageShipper(usage_log, InMemoryUsageStore(), interval_s=60)
    try:
        before = parse_registry()
        await usage_log.append_many([record(i) for i in range(5)])
        await asyncio.sleep(0.05)
        sampler.refresh_local()
        mid = parse_registry()
        assert mid[("royalty_usage_log_pending_records", frozenset())] == 5
        assert mid[("royalty_usage_log_oldest_unshipped_age_seconds", frozenset())] >= 0.04
        assert await shipper.ship_once() == 5
        sampler.refresh_local()
        after = parse_registry()
        assert after[("royalty_usage_log_pending_records", frozenset())] == 0
        assert after[("royalty_usage_log_oldest_unshipped_age_seconds", frozenset())] == 0
        assert delta(before, after, "royalty_usage_shipped_records_total") == 5
    finally:
        await usage_log.close()


MULTIPROC_WORKER = textwrap.dedent(
    """
    import datetime as dt, sys
    from gateway.metrics import InferenceMetrics
    from serving.registry import BaseModel, ModelRegistry
    from tests.support.usage_events import usage_event
    reg = ModelRegistry(); reg.add_base(BaseModel("royalty-tiny", "/m"))
    m = InferenceMetrics(reg)
    for i in range(int(sys.argv[1])):
        m.observe(usage_event(f"r{i}", account_id=1, started_at=dt.datetime.now(dt.UTC),
            adapter=None, base_model="royalty-tiny", prompt_tokens=2, completion_tokens=3,
            total_ms=5.0, ttft_ms=1.0))
    """
)


def test_multiprocess_mode_aggregates_every_worker(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for n in (4, 6):
        subprocess.run(
            [sys.executable, "-c", MULTIPROC_WORKER, str(n)], env=env, check=True, cwd=ROOT
        )
    out = subprocess.run(
        [sys.executable, "-c", "from gateway.metrics import exposition; print(exposition().decode())"],
        env=env, check=True, cwd=ROOT, capture_output=True, text=True,
    ).stdout  # fmt: skip
    s = parse(out)
    labels = frozenset(
        {
            ("endpoint", "completions"),
            ("model", "royalty-tiny"),
            ("status", "200"),
            ("outcome", "ok"),
        }
    )
    assert s[("royalty_inference_requests_total", labels)] == 10
    tok = frozenset({("base_model", "royalty-tiny"), ("adapter", ""), ("direction", "completion")})
    assert s[("royalty_tokens_total", tok)] == 30


def test_observe_never_raises_into_the_usage_path() -> None:
    class Broken(ModelRegistry):
        def resolve(self, name: str):  # type: ignore[no-untyped-def]
            raise RuntimeError("registry bug")

    reg = Broken()
    reg.add_base(BaseModel("royalty-tiny", "/m"))
    reg.add_adapter(Adapter("recipes", "royalty-tiny", "/a"))
    InferenceMetrics(reg).observe(record(1, base_model="", model="whatever"))  # logged, not raised
