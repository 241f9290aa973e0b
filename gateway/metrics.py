"""Prometheus metrics of the gateway, and the `/metrics` endpoint that exposes every package's.

What is measured where:
- every HTTP response: `count_response`, a Litestar `before_send` hook (route template, method,
  status);
- every inference request: `InferenceMetrics.observe`, called with the usage record once it is
  built (it already holds status, tokens, time to first token, total time, model, adapter);
- state that lives in objects, not events (engine health and in-flight requests, usage-log
  depth and age, each vLLM engine's own queue): `MetricsSampler`, a periodic task, plus a
  cheap refresh of the pool's state on every scrape;
- `serving.metrics` and `metering.metrics` hold the objects those packages update themselves.

Cost per request: label children are bound once per (endpoint, model, status) and cached, so
the hot path is a dict lookup and a few lock-protected float additions, no string formatting.
Labels are bounded: `model` is a registered model name or "_unknown", `route` a route template
or "unmatched", `method` one of the HTTP methods; there is no per-key or per-request label.

`/metrics` needs no key: Prometheus scrapes without credentials by default, and the
exposition holds only aggregate counts, no keys, accounts or prompts. Restrict it at the
network (Kubernetes NetworkPolicy, not routed by the ingress) where that matters.

With `PROMETHEUS_MULTIPROC_DIR` set (several gateway worker processes), every process writes
its values to memory-mapped files there and a scrape of any process aggregates all of them
(`prometheus_client.multiprocess`); the directory must be emptied before the workers start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from litestar import MediaType, Request, Response, get
from litestar.types import HTTPResponseStartEvent, Message, Scope
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.parser import text_string_to_metric_families

from metering import metrics as metering_metrics
from serving import metrics as serving_metrics
from serving.registry import ModelRegistry, UnknownModel

if TYPE_CHECKING:
    from metering.usage.log import UsageLog
    from metering.usage.record import UsageRecord
    from serving.pool import EnginePool

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "_unknown"
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "royalty_http_requests_total",
    "HTTP responses of the gateway, by route template, method and status code.",
    ["route", "method", "status"],
)
INFERENCE_REQUESTS = Counter(
    "royalty_inference_requests_total",
    "Inference requests, by endpoint, requested model, HTTP status and outcome "
    "(ok, error, client_cancelled).",
    ["endpoint", "model", "status", "outcome"],
)
INFERENCE_SECONDS = Histogram(
    "royalty_inference_duration_seconds",
    "Time from request to last byte of successful inference requests.",
    ["endpoint", "model"],
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_TTFT_SECONDS = Histogram(
    "royalty_inference_ttft_seconds",
    "Time to first token (first output chunk; whole response when not streaming).",
    ["endpoint", "model"],
    buckets=_TTFT_BUCKETS,
)
TOKENS = Counter(
    "royalty_tokens_total",
    "Tokens processed, by base model, adapter ('' for the base model) and direction "
    "(prompt = in, completion = out).",
    ["base_model", "adapter", "direction"],
)


# --- HTTP responses ---------------------------------------------------------------------------
_http_children: dict[tuple[str, str, int], Any] = {}


async def count_response(message: Message, scope: Scope) -> None:
    """Litestar `before_send` hook: one count per response, at its start (the app uses
    `gateway.app.on_send`, which calls `count_response_start` itself)."""
    if message["type"] == "http.response.start":
        count_response_start(message, scope)


def count_response_start(message: HTTPResponseStartEvent, scope: Scope) -> None:
    """Count an `http.response.start` message."""
    route: str = scope.get("path_template") or "unmatched"
    method: str = scope.get("method", "GET")  # type: ignore[assignment]
    status: int = message["status"]
    key = (route, method, status)
    child = _http_children.get(key)
    if child is None:
        if method not in _METHODS:
            method = "OTHER"
        child = HTTP_REQUESTS.labels(route, method, str(status))
        # Route templates and methods are finite, so the cache is bounded too.
        if method != "OTHER":
            _http_children[key] = child
    child.inc()


# --- inference --------------------------------------------------------------------------------
@dataclass(slots=True)
class _Bound:
    requests: Any
    latency: Any
    ttft: Any


class InferenceMetrics:
    """Observes usage records; the model label is kept only for registered models."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._bound: dict[tuple[str, str, int, str], _Bound] = {}
        self._tokens: dict[tuple[str, str], tuple[Any, Any]] = {}

    def _model_label(self, rec: UsageRecord) -> str:
        if rec.base_model:
            return rec.model  # it resolved, so it is registered
        try:
            self.registry.resolve(rec.model)
        except UnknownModel:
            return UNKNOWN_MODEL
        return rec.model

    def observe(self, rec: UsageRecord) -> None:
        try:
            self._observe(rec)
        except Exception:  # metrics must never stand between a response and its usage record
            log.exception("could not record metrics for %s", rec.request_id)

    def _observe(self, rec: UsageRecord) -> None:
        key = (rec.endpoint, rec.model, rec.http_status, rec.status)
        bound = self._bound.get(key)
        if bound is None:
            model = self._model_label(rec)
            key = (rec.endpoint, model, rec.http_status, rec.status)
            bound = self._bound.get(key)
            if bound is None:
                bound = self._bound[key] = _Bound(
                    INFERENCE_REQUESTS.labels(
                        rec.endpoint, model, str(rec.http_status), rec.status
                    ),
                    INFERENCE_SECONDS.labels(rec.endpoint, model),
                    INFERENCE_TTFT_SECONDS.labels(rec.endpoint, model),
                )
        bound.requests.inc()
        if rec.status == "ok":
            bound.latency.observe(rec.total_ms / 1000.0)
        if rec.ttft_ms is not None:
            bound.ttft.observe(rec.ttft_ms / 1000.0)
        if rec.prompt_tokens or rec.completion_tokens:
            # A record with tokens ran on an engine, so base_model and adapter are registered.
            tkey = (rec.base_model, rec.adapter or "")
            pair = self._tokens.get(tkey)
            if pair is None:
                pair = self._tokens[tkey] = (
                    TOKENS.labels(tkey[0], tkey[1], "prompt"),
                    TOKENS.labels(tkey[0], tkey[1], "completion"),
                )
            pair[0].inc(rec.prompt_tokens)
            pair[1].inc(rec.completion_tokens)


# --- state sampled periodically ---------------------------------------------------------------
def refresh_pool(pool: EnginePool) -> None:
    """Engine health, in-flight requests and loaded adapters, from the pool's own state."""
    for h in pool.handles:
        serving_metrics.ENGINE_UP.labels(h.name).set(1 if h.healthy else 0)
        serving_metrics.ENGINE_IN_FLIGHT.labels(h.name).set(h.in_flight)
        serving_metrics.ENGINE_ADAPTERS_LOADED.labels(h.name).set(len(h.placement.loaded))


def refresh_usage_log(usage_log: UsageLog) -> None:
    metering_metrics.usage_log_state(usage_log.pending_records, usage_log.oldest_unshipped_age_s)


VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"


def parse_vllm_queue(text: str) -> tuple[float, float]:
    """(running, waiting) summed over the engine's models, from vLLM's exposition text."""
    running = waiting = 0.0
    seen = False
    for family in text_string_to_metric_families(text):
        if family.name in (VLLM_RUNNING, VLLM_WAITING):
            seen = True
            total = sum(s.value for s in family.samples if s.name == family.name)
            if family.name == VLLM_RUNNING:
                running += total
            else:
                waiting += total
    if not seen:
        raise ValueError("no vllm:num_requests_running/waiting in the engine's /metrics")
    return running, waiting


class MetricsSampler:
    """Refreshes state gauges every `interval_s`: the pool, the usage log, and each vLLM
    engine's queue scraped from its `/metrics` (engines without a `base_url`, like the fake,
    are not scraped)."""

    def __init__(
        self,
        pool: EnginePool,
        usage_log: UsageLog | None = None,
        *,
        interval_s: float = 5.0,
        scrape_timeout_s: float = 2.0,
    ) -> None:
        self.pool = pool
        self.usage_log = usage_log
        self.interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=scrape_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def refresh_local(self) -> None:
        refresh_pool(self.pool)
        if self.usage_log is not None:
            refresh_usage_log(self.usage_log)

    async def scrape_engines(self) -> None:
        targets = [
            (h.name, url)
            for h in self.pool.handles
            if isinstance(url := getattr(h.client, "base_url", None), str)
        ]
        if not targets:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        await asyncio.gather(*(self._scrape(name, url) for name, url in targets))

    async def _scrape(self, name: str, base_url: str) -> None:
        assert self._session is not None
        try:
            async with self._session.get(base_url + "/metrics") as r:
                if r.status != 200:
                    raise ValueError(f"HTTP {r.status}")
                running, waiting = parse_vllm_queue(await r.text())
        except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError) as e:
            log.debug("could not scrape %s/metrics: %s", base_url, e)
            serving_metrics.ENGINE_SCRAPE_OK.labels(name).set(0)
            # A stale queue depth would look like a healthy engine: report "unknown".
            serving_metrics.ENGINE_REQUESTS_RUNNING.labels(name).set(math.nan)
            serving_metrics.ENGINE_REQUESTS_WAITING.labels(name).set(math.nan)
            return
        serving_metrics.ENGINE_SCRAPE_OK.labels(name).set(1)
        serving_metrics.ENGINE_REQUESTS_RUNNING.labels(name).set(running)
        serving_metrics.ENGINE_REQUESTS_WAITING.labels(name).set(waiting)

    async def sample_once(self) -> None:
        self.refresh_local()
        await self.scrape_engines()

    def start(self) -> None:
        global _active_sampler
        _active_sampler = self
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-sampler")

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception:  # a metrics bug must never take the gateway down
                log.exception("metrics sampling failed")
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        global _active_sampler
        if _active_sampler is self:
            _active_sampler = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if multiprocess_dir():
            # Drop this process's live gauges from the aggregate.
            multiprocess.mark_process_dead(os.getpid())


_active_sampler: MetricsSampler | None = None
"""The running process's sampler (one gateway per process), refreshed on every scrape."""


def refresh_now(pool: EnginePool) -> None:
    """Local state gauges, fresh for this scrape (engine queues stay at the sampler's pace):
    the serving app's own pool, and the running sampler's usage log."""
    refresh_pool(pool)
    if _active_sampler is not None and _active_sampler.usage_log is not None:
        refresh_usage_log(_active_sampler.usage_log)


# --- exposition -------------------------------------------------------------------------------
def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def exposition_registry() -> CollectorRegistry:
    """The process's registry, or an aggregate of every worker's files in multiprocess mode."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition() -> bytes:
    return generate_latest(exposition_registry())


def samples(prefix: str = "royalty_") -> Iterator[tuple[str, dict[str, str], float]]:
    """Every current sample whose name starts with `prefix`: (name, labels, value)."""
    for family in exposition_registry().collect():
        if not family.name.startswith(prefix):
            continue
        for s in family.samples:
            yield s.name, s.labels, s.value


@get("/metrics", media_type=MediaType.TEXT, include_in_schema=False)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus exposition; no key (see the module docstring)."""
    refresh_now(request.app.state["services"].pool)
    # The classic text format: every name here is a legacy-valid name, and every Prometheus
    # version reads it (Litestar appends the charset).
    return Response(exposition(), media_type="text/plain; version=0.0.4")
