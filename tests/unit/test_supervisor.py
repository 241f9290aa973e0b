"""No engine outlives its supervisor, and a restart finds the engine's port free or reclaims
it knowingly (DESIGN invariant 8; issue 13's `kill -9` of `royalty up`).

The engine here is `tests/support/supervision.py`'s stand-in: an HTTP server with `/health` that, like
vLLM's API server with its EngineCore and CPU workers, has worker processes of its own, one of
which leaves the process group with `setsid()`; `stubborn` ones ignore SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from support.pg import free_port
from support.supervision import alive, engine_argv, kill_all, read_json_line, start, tree, wait_gone

from serving.engine import VLLMHttpEngine
from serving.engine_port import (
    EnginePortInUse,
    EngineRecord,
    claim_port,
    listeners,
    pid_path,
    port_free,
    read_record,
    write_record,
)
from serving.placement import AdapterPlacement
from serving.pool import EngineHandle
from serving.supervisor import EngineSupervisor, VLLMServerSpec

ENGINE_TREE = 4  # guard, engine, its worker in the group, its worker that left with setsid()
GONE_WITHIN_S = 8.0  # a grace of 1 s for SIGTERM, then SIGKILL


def _wait_health(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"nothing healthy on port {port}"
        time.sleep(0.1)


def _wait_tree(pid: int, size: int, timeout_s: float = 10.0) -> list[psutil.Process]:
    """`pid` and its descendants, once there are `size` of them and one has left the
    session (and so the process group) with setsid()."""
    deadline = time.monotonic() + timeout_s
    while len(procs := tree(pid)) < size or len({os.getsid(p.pid) for p in procs}) < 2:
        assert time.monotonic() < deadline, procs
        time.sleep(0.05)
    return procs


# --- the supervisor dies ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("loop", "kill", "stubborn"),
    [
        ("uvloop", "process", False),  # royalty up runs on uvloop
        ("uvloop", "group", True),
        ("asyncio", "process", True),
        ("asyncio", "group", False),
    ],
)
def test_engine_tree_ends_when_its_supervisor_is_killed(
    tmp_path: Path, loop: str, kill: str, stubborn: bool
) -> None:
    port = free_port()
    role = ["parent", str(port), str(tmp_path / "run"), str(tmp_path / "engine.log"), loop]
    parent = start([*role, *(["--stubborn"] if stubborn else [])], tmp_path / "parent.log")
    procs: list[psutil.Process] = []
    try:
        guard = read_json_line(parent, 60)["guard"]
        procs = _wait_tree(guard, ENGINE_TREE)
        assert os.getpgid(guard) != os.getpgid(parent.pid)  # the engine has a group of its own

        killed = time.monotonic()
        if kill == "group":
            os.killpg(parent.pid, signal.SIGKILL)
        else:
            parent.kill()
        parent.wait()

        left = wait_gone(procs, GONE_WITHIN_S)
        assert not left, f"outlived their supervisor: {[p.cmdline() for p in left]}"
        assert time.monotonic() - killed < GONE_WITHIN_S
        assert port_free("127.0.0.1", port)
        log = (tmp_path / "engine.log").read_text()
        assert "supervisor gone" in log, log
    finally:
        parent.kill()
        kill_all(procs)


def test_when_guard_and_supervisor_die_together_the_next_start_ends_what_is_left(
    tmp_path: Path,
) -> None:
    """Nobody is left to end the engine's workers when the guard dies with its supervisor
    (`kill -9` of both groups, say): the engine itself goes (PR_SET_PDEATHSIG from the
    guard), and the next start on the same data directory ends the workers it recorded."""
    port, run_dir = free_port(), tmp_path / "run"
    role = ["parent", str(port), str(run_dir), str(tmp_path / "engine.log"), "uvloop"]
    parent = start(role, tmp_path / "parent.log")
    procs: list[psutil.Process] = []
    try:
        procs = _wait_tree(read_json_line(parent, 60)["guard"], ENGINE_TREE)
        guard, engine, workers = procs[0], procs[1], procs[2:]
        parent.send_signal(signal.SIGSTOP)  # so that it cannot sweep up after the guard
        guard.kill()
        parent.kill()
        parent.wait()

        assert not wait_gone([guard, engine], GONE_WITHIN_S)
        assert alive(workers) == workers  # orphans: the gap the pid file closes

        claim_port("127.0.0.1", port, run_dir, grace_s=1.0)

        assert not alive(workers)
        assert not pid_path(run_dir, port).exists()
    finally:
        parent.kill()
        kill_all(procs)


# --- the supervisor stops, the engine dies, the guard dies -----------------------------------
@pytest.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[EngineSupervisor]:
    sup = _supervisor(tmp_path, free_port(), stubborn=True)
    try:
        yield sup
    finally:
        await sup.stop(grace_s=5)
        await sup.handle.client.close()
        if sup.pid is not None:
            kill_all(_group(sup.pid))


def _supervisor(tmp_path: Path, port: int, *, stubborn: bool) -> EngineSupervisor:
    spec = VLLMServerSpec(
        model_path="stand-in",
        served_name="stand-in",
        port=port,
        command=tuple(engine_argv(port, stubborn=stubborn)),
    )
    client = VLLMHttpEngine(spec.url, name="stand-in")
    return EngineSupervisor(
        spec,
        EngineHandle(client, AdapterPlacement(client, 1)),
        tmp_path / "logs" / "engine.log",
        run_dir=tmp_path / "run",
        max_backoff_s=1.0,
        kill_grace_s=1.0,
    )


def _group(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except OSError:
            continue
    return out


async def _ready_tree(sup: EngineSupervisor) -> list[psutil.Process]:
    await sup.wait_ready(60)
    assert sup.pid is not None
    return await asyncio.to_thread(_wait_tree, sup.pid, ENGINE_TREE)


async def _gone(procs: list[psutil.Process]) -> list[psutil.Process]:
    return await asyncio.to_thread(wait_gone, procs, GONE_WITHIN_S)


async def _restarted(sup: EngineSupervisor, old_pid: int) -> None:
    deadline = time.monotonic() + 30
    while not (sup.handle.healthy and sup.pid != old_pid):
        assert time.monotonic() < deadline, "engine not restarted"
        await asyncio.sleep(0.1)


async def test_stop_ends_the_engine_tree_and_removes_the_pid_file(
    supervisor: EngineSupervisor,
) -> None:
    await supervisor.start()
    procs = await _ready_tree(supervisor)
    record = read_record(supervisor.pid_file)
    assert record is not None and record.pgid == supervisor.pid
    assert {pid for pid, _ in record.members} == {p.pid for p in procs[1:]}

    await supervisor.stop(grace_s=5)

    assert not alive(procs)  # stubborn workers too: SIGKILL after the grace
    assert not supervisor.pid_file.exists()
    assert not supervisor.handle.healthy


async def test_an_engine_that_dies_leaves_no_workers_behind(
    supervisor: EngineSupervisor,
) -> None:
    await supervisor.start()
    procs = await _ready_tree(supervisor)
    guard = procs[0].pid
    procs[1].kill()  # the engine (vLLM's API server) crashes; its workers ignore SIGTERM

    assert not await _gone(procs)
    await _restarted(supervisor, guard)
    assert supervisor.handle.restarts == 1


async def test_a_guard_killed_alone_is_swept_up_after(supervisor: EngineSupervisor) -> None:
    """SIGKILL of the guard (the OOM killer's choice, say): its engine gets PDEATHSIG's
    SIGTERM, ignores it, and the supervisor kills what is left of the group, the worker that
    left the group included, before it starts the engine again."""
    await supervisor.start()
    procs = await _ready_tree(supervisor)
    procs[0].kill()

    assert not await _gone(procs)
    await _restarted(supervisor, procs[0].pid)


# --- the port --------------------------------------------------------------------------------
@pytest.fixture
def stale_engine() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A stand-in engine in a group of its own, listening on its port: what a `royalty up`
    without the guard left behind."""
    port = free_port()
    proc = subprocess.Popen(engine_argv(port, stubborn=True), start_new_session=True)
    procs: list[psutil.Process] = []
    try:
        _wait_health(port)
        procs = _wait_tree(proc.pid, 3)
        yield port, proc
    finally:
        proc.kill()
        kill_all(procs)
        proc.wait()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def _record_for(port: int, leader: int, **changes: object) -> EngineRecord:
    """The pid file a supervisor (now dead) wrote for the engine group led by `leader`."""
    record = EngineRecord(
        port=port,
        pgid=leader,
        leader_pid=leader,
        leader_started=psutil.Process(leader).create_time(),
        supervisor_pid=_dead_pid(),
        supervisor_started=time.time() - 60,
        members=tuple((p.pid, p.create_time()) for p in tree(leader)[1:]),
    )
    return dataclasses.replace(record, **changes)


async def test_a_restart_reclaims_the_port_from_its_own_stale_engine(
    tmp_path: Path, stale_engine: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, stale = stale_engine
    old = tree(stale.pid)
    write_record(pid_path(tmp_path / "run", port), _record_for(port, stale.pid))
    sup = _supervisor(tmp_path, port, stubborn=False)
    try:
        await sup.start()
        assert not alive(old)  # stubborn: it took SIGKILL after the grace, and the worker
        # that left the group is known by the pid file
        await sup.wait_ready(60)
        holders = await asyncio.to_thread(listeners, port)
        assert holders and all(p is not None and os.getpgid(p.pid) == sup.pid for p in holders)
    finally:
        await sup.stop()
        await sup.handle.client.close()


async def _refused(tmp_path: Path, port: int) -> EnginePortInUse:
    sup = _supervisor(tmp_path, port, stubborn=False)
    try:
        with pytest.raises(EnginePortInUse) as e:
            await sup.start()
        assert sup.process is None  # no second server was started to fail later
        return e.value
    finally:
        await sup.stop()
        await sup.handle.client.close()


async def test_a_foreign_process_on_the_port_is_named_and_left_alone(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as foreign:
        port = foreign.getsockname()[1]
        error = await _refused(tmp_path, port)
    assert f"engine port {port}" in str(error)
    assert f"pid {os.getpid()}" in str(error)  # this test process holds it
    assert "ROYALTY_ENGINE_PORT" in str(error)


async def test_a_reused_pid_in_the_pid_file_proves_nothing(
    tmp_path: Path, stale_engine: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, engine = stale_engine
    started = psutil.Process(engine.pid).create_time()
    # The pid and the group are those of a process started an hour after the one recorded.
    record = _record_for(port, engine.pid, leader_started=started - 3600, members=())
    write_record(pid_path(tmp_path / "run", port), record)

    error = await _refused(tmp_path, port)

    assert f"pid {engine.pid}" in str(error) and "supervision.py engine" in str(error)
    assert engine.poll() is None


@pytest.fixture
def other_royalty() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing for another `royalty up` on the same data directory."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield other
    finally:
        other.kill()
        other.wait()


async def test_the_engine_of_a_running_supervisor_is_not_stale(
    tmp_path: Path,
    stale_engine: tuple[int, subprocess.Popen[bytes]],
    other_royalty: subprocess.Popen[bytes],
) -> None:
    port, engine = stale_engine
    record = _record_for(
        port,
        engine.pid,
        supervisor_pid=other_royalty.pid,
        supervisor_started=psutil.Process(other_royalty.pid).create_time(),
    )
    write_record(pid_path(tmp_path / "run", port), record)

    error = await _refused(tmp_path, port)

    assert f"supervisor pid {other_royalty.pid}" in str(error)
    assert engine.poll() is None


def test_the_pid_file_round_trips(tmp_path: Path) -> None:
    record = EngineRecord(1, 2, 2, 3.5, 4, 5.5, members=((6, 7.25),))
    write_record(tmp_path / "engine-1.pid", record)
    assert read_record(tmp_path / "engine-1.pid") == record
    assert json.loads((tmp_path / "engine-1.pid").read_text())["pgid"] == 2
    (tmp_path / "engine-1.pid").write_text("{torn")
    assert read_record(tmp_path / "engine-1.pid") is None


# --- the gateway's worker children -----------------------------------------------------------
async def test_stopping_a_worker_that_ignores_sigterm_is_bounded() -> None:
    from royalty.runtime import _stop_process

    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ignore_term + "print('ready', flush=True); time.sleep(60)",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and await proc.stdout.readline() == b"ready\n"
    started = time.monotonic()

    await _stop_process(proc, timeout_s=0.5)

    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5
