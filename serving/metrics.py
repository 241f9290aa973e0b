"""Prometheus metric objects that `serving/` updates: adapter placement and engine state.

A leaf module (only `prometheus_client`), so `serving` records its own events without
importing `gateway`; the gateway's `/metrics` endpoint exposes them. Labels are bounded:
`adapter` is the name an adapter of the model registry is loaded under on the engine (its
registry name unless it is served under another), and placement never sees any other;
`engine` names a configured engine replica.

Gauges carry a `multiprocess_mode` so that, with `PROMETHEUS_MULTIPROC_DIR` set (several
gateway worker processes), the values of live processes are combined sensibly.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ADAPTER_LOADS = Counter(
    "royalty_adapter_loads_total",
    "Runtime LoRA adapter loads into an engine.",
    ["adapter"],
)
ADAPTER_LOAD_FAILURES = Counter(
    "royalty_adapter_load_failures_total",
    "Adapter loads the engine refused.",
    ["adapter"],
)
ADAPTER_EVICTIONS = Counter(
    "royalty_adapter_evictions_total",
    "Adapters unloaded from an engine to make room for another (LRU).",
    ["adapter"],
)
ADAPTER_LOAD_SECONDS = Histogram(
    "royalty_adapter_load_seconds",
    "Time to load one adapter into an engine.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

ENGINE_UP = Gauge(
    "royalty_engine_up",
    "1 while the gateway considers the engine healthy, else 0.",
    ["engine"],
    multiprocess_mode="livemax",
)
ENGINE_IN_FLIGHT = Gauge(
    "royalty_engine_in_flight_requests",
    "Requests the gateway has sent to the engine and not finished.",
    ["engine"],
    multiprocess_mode="livesum",
)
ENGINE_ADAPTERS_LOADED = Gauge(
    "royalty_engine_adapters_loaded",
    "Adapters the gateway believes are loaded in the engine.",
    ["engine"],
    multiprocess_mode="livemax",
)
ENGINE_REQUESTS_RUNNING = Gauge(
    "royalty_engine_requests_running",
    "vllm:num_requests_running scraped from the engine's /metrics (NaN until scraped).",
    ["engine"],
    multiprocess_mode="livemostrecent",
)
ENGINE_REQUESTS_WAITING = Gauge(
    "royalty_engine_requests_waiting",
    "vllm:num_requests_waiting scraped from the engine's /metrics: the engine's queue depth.",
    ["engine"],
    multiprocess_mode="livemostrecent",
)
ENGINE_SCRAPE_OK = Gauge(
    "royalty_engine_scrape_ok",
    "1 if the last scrape of the engine's /metrics succeeded, else 0.",
    ["engine"],
    multiprocess_mode="livemostrecent",
)


def adapter_loaded(adapter: str, seconds: float) -> None:
    ADAPTER_LOADS.labels(adapter).inc()
    ADAPTER_LOAD_SECONDS.observe(seconds)


def adapter_load_failed(adapter: str) -> None:
    ADAPTER_LOAD_FAILURES.labels(adapter).inc()


def adapter_evicted(adapter: str) -> None:
    ADAPTER_EVICTIONS.labels(adapter).inc()
