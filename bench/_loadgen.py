"""The load generator of the gateway benchmarks (`gateway_overhead.py`, `gateway_cpu.py`):
closed-loop HTTP/1.1 streams against one endpoint, what a round measures (latency, time to
first token, tokens, the CPU of the serving process and of everything else on the machine), and
the statistics over rounds. Imports nothing of the other bench modules.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httptools
import psutil

# =============================================================================================
# Load generator: raw asyncio + httptools HTTP/1.1 client, one keep-alive connection per
# concurrent stream, closed loop (each stream sends its next request when the last one ends).
# =============================================================================================

_TOKEN_RE = re.compile(rb'"(?:content|text)":\s*"[^"]')
_COMPLETION_TOKENS = b'"completion_tokens":'


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; one request at a time."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.fut: asyncio.Future[None] | None = None
        self.body: list[bytes] = []
        self.scan = b""
        self.ttft: float | None = None
        self.status = 0
        self.keep_alive = True
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if self.fut is not None and not self.fut.done():
                self.fut.set_exception(ConnectionError(f"bad response: {e}"))
            if self.transport is not None:
                self.transport.close()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        if self.stream and self.ttft is None:
            buf = self.scan + body
            if _TOKEN_RE.search(buf):
                self.ttft = time.perf_counter()
                self.scan = b""
            else:
                self.scan = buf[-32:]

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    def send(self, request: bytes) -> asyncio.Future[None]:
        assert self.transport is not None
        self.body = []
        self.scan = b""
        self.ttft = None
        self.status = 0
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.fut


def _completion_tokens(body: bytes) -> int:
    i = body.rfind(_COMPLETION_TOKENS)
    if i < 0:
        return 0
    j = i + len(_COMPLETION_TOKENS)
    m = re.match(rb"\s*(\d+)", body[j : j + 24])
    return int(m.group(1)) if m else 0


@dataclass
class Endpoint:
    """An HTTP target the load generator hits: the engine, the gateway, or LiteLLM."""

    name: str
    host: str
    port: int
    path: str
    body: dict[str, Any]
    api_key: str | None = None
    pid: int | None = None  # the serving process, for CPU accounting and profiling

    def request_bytes(self) -> bytes:
        payload = json.dumps(self.body, separators=(",", ":")).encode()
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: */*",
            f"Content-Length: {len(payload)}",
        ]
        if self.api_key:
            head.append(f"Authorization: Bearer {self.api_key}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


@dataclass
class RoundResult:
    target: str
    concurrency: int
    window_s: float
    latencies_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    completed_total: int = 0  # every 200 response, warm-up and tail included
    proxy_cpu_s: float | None = None
    core_busy: list[float] = field(default_factory=list)
    other_cpu_s: float | None = None  # CPU used by processes outside the benchmark
    backend_conns: int | None = None  # connections the fake backend accepted in the round
    backend_reqs: int | None = None


async def run_round(
    ep: Endpoint,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    *,
    stream: bool,
    own_pids: Sequence[int] = (),
    drain_timeout_s: float = 120.0,
) -> RoundResult:
    loop = asyncio.get_running_loop()
    request = ep.request_bytes()
    res = RoundResult(ep.name, concurrency, duration_s)
    t_start = time.perf_counter()
    t_warm = t_start + warmup_s
    t_end = t_warm + duration_s
    proc = psutil.Process(ep.pid) if ep.pid else None
    own = {os.getpid(), *own_pids}
    marks: dict[str, Any] = {}

    def mark(tag: str) -> None:
        marks[tag] = (
            _proc_cpu(proc),
            psutil.cpu_times(percpu=True),
            time.perf_counter(),
            _tree_cpu(own),
        )

    loop.call_later(warmup_s, mark, "start")
    loop.call_later(warmup_s + duration_s, mark, "end")

    async def connect() -> _Conn:
        _, conn = await loop.create_connection(lambda: _Conn(stream), ep.host, ep.port)
        conn.transport.get_extra_info("socket").setsockopt(  # type: ignore[union-attr]
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        return conn

    async def worker() -> None:
        conn: _Conn | None = None
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            try:
                if conn is None or conn.lost or not conn.keep_alive:
                    if conn is not None and conn.transport is not None:
                        conn.transport.close()
                    conn = await connect()
                    t0 = time.perf_counter()
                await conn.send(request)
            except (ConnectionError, OSError) as e:
                t1 = time.perf_counter()
                if t_warm <= t1 <= t_end:
                    res.errors += 1
                    if len(res.error_samples) < 3:
                        res.error_samples.append(f"{e.__class__.__name__}: {e}")
                conn = None
                await asyncio.sleep(0.05)
                continue
            t1 = time.perf_counter()
            ok = conn.status == 200
            if ok:
                res.completed_total += 1
            if not (t_warm <= t1 <= t_end):
                continue
            if not ok:
                res.errors += 1
                if len(res.error_samples) < 3:
                    res.error_samples.append(
                        f"HTTP {conn.status}: {b''.join(conn.body)[:200].decode(errors='replace')}"
                    )
                continue
            body = b"".join(conn.body)
            res.latencies_ms.append((t1 - t0) * 1000.0)
            if stream:
                if conn.ttft is not None:
                    res.ttft_ms.append((conn.ttft - t0) * 1000.0)
                if not body.rstrip().endswith(b"data: [DONE]"):
                    res.errors += 1
                    if len(res.error_samples) < 3:
                        res.error_samples.append("stream did not end with [DONE]")
            res.tokens += _completion_tokens(body)
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=warmup_s + duration_s + drain_timeout_s)
    for t in pending:
        t.cancel()
    for t in done:
        if t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    if "start" in marks and "end" in marks:
        (c0, cores0, w0, o0), (c1, cores1, w1, o1) = marks["start"], marks["end"]
        res.window_s = w1 - w0
        if c0 is not None and c1 is not None:
            res.proxy_cpu_s = c1 - c0
        res.core_busy = [_busy(a, b) for a, b in zip(cores0, cores1, strict=True)]
        busy_s = sum(_busy_s(a, b) for a, b in zip(cores0, cores1, strict=True))
        res.other_cpu_s = max(0.0, busy_s - (o1 - o0))
    return res


def _proc_cpu(proc: psutil.Process | None) -> float | None:
    if proc is None:
        return None
    try:
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except psutil.Error:
        return None


def _tree_cpu(roots: set[int]) -> float:
    """CPU seconds (user + system) of these processes and all their descendants, each once."""
    seen: set[int] = set()
    total = 0.0
    for pid in roots:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in tree:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
    return total


def _busy_s(a: Any, b: Any) -> float:
    idle = (b.idle - a.idle) + (getattr(b, "iowait", 0) - getattr(a, "iowait", 0))
    return sum(b) - sum(a) - idle  # seconds


def _busy(a: Any, b: Any) -> float:
    idle = (b.idle - a.idle) + (getattr(b, "iowait", 0) - getattr(a, "iowait", 0))
    total = sum(b) - sum(a)
    return 100.0 * (1 - idle / total) if total > 0 else 0.0


async def wait_quiet(own_pids: Sequence[int], max_wait_s: float, threshold_pct: float) -> float:
    """Wait (up to max_wait_s) until processes outside the benchmark use less than
    threshold_pct of one core over a 1 s sample; returns the last sample."""
    deadline = time.monotonic() + max_wait_s
    own = {os.getpid(), *own_pids}
    while True:
        c0 = psutil.cpu_times(percpu=True)
        o0 = _tree_cpu(own)
        w0 = time.perf_counter()
        await asyncio.sleep(1.0)
        c1 = psutil.cpu_times(percpu=True)
        o1 = _tree_cpu(own)
        busy = sum(_busy_s(a, b) for a, b in zip(c0, c1, strict=True))
        other = 100.0 * max(0.0, busy - (o1 - o0)) / (time.perf_counter() - w0)
        if other < threshold_pct or time.monotonic() >= deadline:
            return other


# =============================================================================================
# Statistics
# =============================================================================================


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))  # nearest rank
    return s[k]


@dataclass
class Stats:
    target: str
    concurrency: int
    requests: int
    errors: int
    window_s: float
    rps: float
    tokens_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    proxy_cpu_pct: float | None  # CPU of the serving process over the window, % of one core
    cpu_us_per_req: float | None
    rps_per_core: float | None
    core_busy_pct: list[float]
    other_cpu_pct: float | None  # CPU used outside the benchmark's processes, % of one core
    backend_conns_per_req: float | None  # fake backend only: new TCP connections per request
    error_samples: list[str]
    completed_total: int


def aggregate(rounds: list[RoundResult]) -> Stats:
    lat = [x for r in rounds for x in r.latencies_ms]
    ttft = [x for r in rounds for x in r.ttft_ms]
    window = sum(r.window_s for r in rounds)
    n = len(lat)
    cpu = [r.proxy_cpu_s for r in rounds if r.proxy_cpu_s is not None]
    cpu_s = sum(cpu) if len(cpu) == len(rounds) else None
    cores = [r.core_busy for r in rounds if r.core_busy]
    core_busy = (
        [sum(c[i] for c in cores) / len(cores) for i in range(len(cores[0]))] if cores else []
    )
    rps = n / window if window else 0.0
    cpu_pct = 100.0 * cpu_s / window if cpu_s is not None and window else None
    return Stats(
        target=rounds[0].target,
        concurrency=rounds[0].concurrency,
        requests=n,
        errors=sum(r.errors for r in rounds),
        window_s=window,
        rps=rps,
        tokens_per_s=sum(r.tokens for r in rounds) / window if window else 0.0,
        p50_ms=pct(lat, 50),
        p99_ms=pct(lat, 99),
        ttft_p50_ms=pct(ttft, 50),
        ttft_p99_ms=pct(ttft, 99),
        proxy_cpu_pct=cpu_pct,
        cpu_us_per_req=(cpu_s * 1e6 / n) if cpu_s is not None and n else None,
        rps_per_core=(rps / (cpu_pct / 100.0)) if cpu_pct else None,
        core_busy_pct=core_busy,
        backend_conns_per_req=(
            sum(r.backend_conns or 0 for r in rounds) / sum(r.backend_reqs or 0 for r in rounds)
            if all(r.backend_reqs for r in rounds)
            else None
        ),
        other_cpu_pct=(
            100.0 * sum(r.other_cpu_s or 0.0 for r in rounds) / window if window else None
        ),
        error_samples=[e for r in rounds for e in r.error_samples][:3],
        completed_total=sum(r.completed_total for r in rounds),
    )


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def overhead(direct: Stats, gw: Stats) -> dict[str, float | None]:
    return {
        "p50_ms": _sub(gw.p50_ms, direct.p50_ms),
        "p99_ms": _sub(gw.p99_ms, direct.p99_ms),
        "ttft_p50_ms": _sub(gw.ttft_p50_ms, direct.ttft_p50_ms),
        "ttft_p99_ms": _sub(gw.ttft_p99_ms, direct.ttft_p99_ms),
        "rps_ratio": gw.rps / direct.rps if direct.rps else None,
        "tokens_ratio": gw.tokens_per_s / direct.tokens_per_s if direct.tokens_per_s else None,
    }


# =============================================================================================
# Scenarios
# =============================================================================================


@dataclass
class Scenario:
    key: str
    title: str
    stream: bool
    levels: list[int]
    targets: list[str]  # "direct", "gateway", "litellm"
    token_delay_ms: float = 0.0
    litellm_levels: list[int] = field(default_factory=list)
    profile_level: int | None = None


@dataclass
class ScenarioResult:
    scenario: Scenario
    stats: dict[int, dict[str, Stats]] = field(default_factory=dict)
    overheads: dict[int, dict[str, float | None]] = field(default_factory=dict)
    profile: dict[str, Any] | None = None


# =============================================================================================
# Request bodies
# =============================================================================================


def chat_body(model: str, tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a short recipe for warm bread."}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def completion_body(
    model: str, tokens: int, stream: bool, prompt: str = "The planet"
) -> dict[str, Any]:
    # "The planet" runs to max_tokens at temperature 0 on the demo models; prompts the model
    # answers with an immediate EOS would measure one-token streams.
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": tokens,
                            "temperature": 0}  # fmt: skip
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body
