"""Stand-ins for the supervision tests: processes shaped like a supervised vLLM engine, without
vLLM.

`python supervision.py engine PORT [--stubborn]` is an HTTP server answering `/health`
that, like vLLM's API server with its EngineCore and CPU workers, starts worker processes of
its own: one in its process group and one that leaves it with `setsid()`. `--stubborn` makes
the server and its workers ignore SIGTERM, as a wedged engine would, so that only SIGKILL ends
them.

`python supervision.py parent PORT RUN_DIR LOG LOOP [--stubborn]` is `royalty up` in
miniature: an `EngineSupervisor` on an event loop (`uvloop` or `asyncio`) supervising the
stand-in engine. Once the engine is ready it prints `{"guard": PID}` and waits to be killed.

`python supervision.py workers DATABASE_URL LOG_DIR LOOP` starts the ledger worker the way
`royalty up` does (`royalty.runtime._start_ledger_worker`), prints `{"worker": PID}` and waits
to be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]


# --- for the tests -------------------------------------------------------------------------
def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie has ended: it only waits for its parent's wait())."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def wait_gone(procs: Iterable[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until none of `procs` runs; returns those still running after `timeout_s`."""
    procs = list(procs)
    deadline = time.monotonic() + timeout_s
    while (left := alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def kill_all(procs: Iterable[psutil.Process]) -> None:
    for p in alive(procs):
        with contextlib.suppress(psutil.Error):
            p.kill()


def read_json_line(proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, int]:
    """The first line `proc` prints, as JSON, or an AssertionError if none comes in time."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else b""
    assert line, f"no line from {proc.args} in {timeout_s}s (exit status {proc.poll()})"
    out: dict[str, int] = json.loads(line)
    return out


def start(role: list[str], log: Path) -> subprocess.Popen[bytes]:
    """This file as a `role` process, in a process group (and session) of its own."""
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, str(HERE), *role],
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )


# --- the processes ---------------------------------------------------------------------------
def engine_argv(port: int, *, stubborn: bool = False) -> list[str]:
    return [sys.executable, str(HERE), "engine", str(port), *(["--stubborn"] if stubborn else [])]


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _engine(port: int, stubborn: bool) -> None:
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for escape in (False, True):
        subprocess.Popen(
            [sys.executable, str(HERE), "worker", *(["--setsid"] if escape else []),
             *(["--stubborn"] if stubborn else [])]
        )  # fmt: skip
    ThreadingHTTPServer(("127.0.0.1", port), _Health).serve_forever()


def _worker(setsid: bool, stubborn: bool) -> None:
    if setsid:
        os.setsid()
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(60)


async def _parent(port: int, run_dir: Path, log_path: Path, stubborn: bool) -> None:
    sys.path.insert(0, str(REPO))
    from serving.engine import VLLMHttpEngine
    from serving.placement import AdapterPlacement
    from serving.pool import EngineHandle
    from serving.supervisor import EngineSupervisor, VLLMServerSpec

    spec = VLLMServerSpec(
        model_path="stand-in",
        served_name="stand-in",
        port=port,
        command=tuple(engine_argv(port, stubborn=stubborn)),
    )
    client = VLLMHttpEngine(spec.url, name="stand-in")
    handle = EngineHandle(client, AdapterPlacement(client, 1))
    sup = EngineSupervisor(spec, handle, log_path, run_dir=run_dir, kill_grace_s=1.0)
    await sup.start()
    await sup.wait_ready(60)
    sys.stdout.write(json.dumps({"guard": sup.pid}) + "\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)


async def _workers(database_url: str, log_dir: Path) -> None:
    sys.path.insert(0, str(REPO))
    from royalty.runtime import _start_ledger_worker

    proc = await _start_ledger_worker(database_url, log_dir / "ledger-worker.log")
    sys.stdout.write(json.dumps({"worker": proc.pid}) + "\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)


def _run(coro: Coroutine[None, None, None], loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def main(argv: list[str]) -> None:
    stubborn = "--stubborn" in argv
    if argv[0] == "engine":
        _engine(int(argv[1]), stubborn)
    elif argv[0] == "worker":
        _worker("--setsid" in argv, stubborn)
    elif argv[0] == "parent":
        port, run_dir, log_path, loop = int(argv[1]), Path(argv[2]), Path(argv[3]), argv[4]
        _run(_parent(port, run_dir, log_path, stubborn), loop)
    elif argv[0] == "workers":
        _run(_workers(argv[1], Path(argv[2])), argv[3])
    else:
        raise SystemExit(f"unknown role {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
