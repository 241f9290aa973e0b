"""Who holds a supervised engine's port, and taking it back from our own stale engine.

Each supervised engine has a pid file (`<data dir>/run/engine-<port>.pid`, JSON) naming its
process group, the group leader's pid and start time, the pids and start times of the
engine's processes once it is ready, and the supervisor's pid and start time. Start times
(psutil's `create_time`) make a reused pid harmless: a process whose start time differs is
somebody else.

Before an engine is started on a port, `claim_port`:

1. reads the pid file; if the supervisor it names is alive (another `royalty up` on the same
   data directory), stops with `EnginePortInUse`: that engine is not stale;
2. otherwise ends the group it names, if the group is still ours (its leader, or one of the
   recorded engine processes, alive with the recorded start time), SIGTERM then SIGKILL after
   a grace, and waits for the port to be released;
3. if the port is still taken, stops with `EnginePortInUse` naming the port and the process
   listening on it (pid and command line, from psutil): a foreign server there would answer
   the new engine's health checks and serve requests in its place.

It never kills a process it cannot prove it started.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from serving.engine_guard import end_tree, group_members

log = logging.getLogger(__name__)

START_TIME_TOLERANCE_S = 0.05


class EnginePortInUse(RuntimeError):
    """The engine's port is taken by a process this supervisor may not stop."""


@dataclass(frozen=True, slots=True)
class EngineRecord:
    port: int
    pgid: int
    leader_pid: int
    leader_started: float
    supervisor_pid: int
    supervisor_started: float
    members: tuple[tuple[int, float], ...] = ()
    """(pid, start time) of the engine's processes, recorded once it is ready."""


def pid_path(run_dir: Path, port: int) -> Path:
    return run_dir / f"engine-{port}.pid"


def started_at(pid: int) -> float | None:
    """A live process's start time (psutil's `create_time`), None when there is none."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except psutil.Error:
        return None


def same_process(pid: int, started: float) -> psutil.Process | None:
    """The live process `pid` if it is the one that started at `started`, else None."""
    now = started_at(pid)
    if now is None or abs(now - started) >= START_TIME_TOLERANCE_S:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def write_record(path: Path, record: EngineRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def read_record(path: Path) -> EngineRecord | None:
    try:
        raw = json.loads(path.read_text())
        raw["members"] = tuple((int(pid), float(t)) for pid, t in raw.get("members", ()))
        return EngineRecord(**raw)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:  # torn or foreign file: it proves nothing
        log.warning("ignoring unreadable engine pid file %s: %s", path, e)
        return None


def remove_record(path: Path, record: EngineRecord | None = None) -> None:
    """Remove the pid file (only if it still names `record`'s group, when given)."""
    if record is not None:
        current = read_record(path)
        if current is not None and current.pgid != record.pgid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on `host:port` now (as vLLM's would, SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def listeners(port: int) -> list[psutil.Process | None]:
    """The processes listening on TCP `port` (None for one psutil may not name)."""
    out: list[psutil.Process | None] = []
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                out.append(psutil.Process(c.pid) if c.pid else None)
    return out


def describe(p: psutil.Process | None) -> str:
    if p is None:
        return "a process this user cannot see (another user's?)"
    try:
        cmd = " ".join(p.cmdline()) or p.name()
    except psutil.Error:
        cmd = "?"
    try:
        pgid: int | str = os.getpgid(p.pid)
    except OSError:
        pgid = "?"
    return f"pid {p.pid} (process group {pgid}): {cmd[:300]}"


def ours(record: EngineRecord) -> list[psutil.Process]:
    """The live recorded engine processes, and the rest of their group if one of them is
    still in it (a group cannot be reused while it has members, so it is still ours)."""
    proofs = ((record.leader_pid, record.leader_started), *record.members)
    proven = {p.pid: p for pid, t in proofs if (p := same_process(pid, t)) is not None}
    group = {p.pid: p for p in group_members(record.pgid)}
    if proven.keys() & group.keys():
        return list({**group, **proven}.values())
    return list(proven.values())  # those that left the group, if any


def claim_port(
    host: str,
    port: int,
    run_dir: Path,
    *,
    grace_s: float = 10.0,
    release_wait_s: float = 10.0,
) -> None:
    """Make `port` free for a new engine, ending our own stale engine if it holds it; raise
    `EnginePortInUse` if anything else does."""
    path = pid_path(run_dir, port)
    record = read_record(path)
    if record is not None:
        if record.supervisor_pid != os.getpid() and same_process(
            record.supervisor_pid, record.supervisor_started
        ):
            raise EnginePortInUse(
                f"engine port {port} belongs to the engine of a running royalty (supervisor "
                f"pid {record.supervisor_pid}, engine group {record.pgid}, per {path}); stop "
                "it first or give this one another ROYALTY_ENGINE_PORT"
            )
        stale = ours(record)
        if stale:
            log.warning(
                "engine port %s: ending stale engine group %s from an earlier run (%s)",
                port,
                record.pgid,
                ", ".join(describe(p) for p in stale),
            )
            left = end_tree(lambda: ours(record), grace_s)
            if left:
                raise EnginePortInUse(
                    f"engine port {port}: stale engine group {record.pgid} did not exit after "
                    f"SIGKILL: {', '.join(describe(p) for p in left)}"
                )
            deadline = time.monotonic() + release_wait_s
            while not port_free(host, port) and time.monotonic() < deadline:
                time.sleep(0.1)
        remove_record(path)
    if port_free(host, port):
        return
    holders = listeners(port) or [None]
    raise EnginePortInUse(
        f"engine port {port} on {host} is already in use by "
        f"{'; '.join(describe(p) for p in holders)}. This data directory did not start it "
        f"(no live engine recorded in {path}), so it is left alone: stop it, or give royalty "
        "another port with ROYALTY_ENGINE_PORT"
    )
