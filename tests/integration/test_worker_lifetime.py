"""The ledger worker `royalty up` starts as a child ends with it, SIGKILL included
(PR_SET_PDEATHSIG from `royalty.runtime._start_child`; DESIGN invariant 8)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import psutil
import pytest
from support.supervision import alive, kill_all, read_json_line, start, wait_gone

pytestmark = pytest.mark.integration


def _running_worker(pid: int, log: Path, timeout_s: float = 60.0) -> psutil.Process:
    """The worker, once it has started its Python (and not just forked)."""
    worker = psutil.Process(pid)
    deadline = time.monotonic() + timeout_s
    while "worker" not in " ".join(worker.cmdline()):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.05)
    time.sleep(2)  # into its posting loop (a worker still importing dies all the same)
    assert alive([worker]), log.read_text()
    return worker


def _kill_gateway_and_watch(database_url: str, tmp_path: Path, loop: str) -> list[str]:
    """Start a gateway stand-in with its ledger worker, SIGKILL it; the worker's command line
    if it is still running 5 s later."""
    parent = start(["workers", database_url, str(tmp_path), loop], tmp_path / "parent.log")
    procs: list[psutil.Process] = []
    try:
        pid = read_json_line(parent, 60)["worker"]
        procs = [_running_worker(pid, tmp_path / "ledger-worker.log")]
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        return [" ".join(p.cmdline()) for p in wait_gone(procs, 5.0)]
    finally:
        parent.kill()
        kill_all(procs)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_the_ledger_worker_ends_with_a_killed_gateway(
    tmp_path: Path, database_url: str, loop: str
) -> None:
    left = await asyncio.to_thread(_kill_gateway_and_watch, database_url, tmp_path, loop)
    assert not left, f"outlived the gateway: {left}"
