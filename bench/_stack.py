"""The processes under test of the gateway benchmarks: children in their own process groups,
pinned to CPUs, logging to files (`Proc`); the fake or real vLLM backend, `royalty up` and
LiteLLM started and awaited (`Stack`); small HTTP and PostgreSQL helpers. Imports nothing of the
other bench modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
LITELLM_BIN = BENCH / ".venv-litellm" / "bin" / "litellm"
LITELLM_KEY = "sk-royalty-bench-0123456789abcdef"


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
        env["ROYALTY_TRAINING_WORKER"] = "0"  # no torch child next to the measured gateway
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
