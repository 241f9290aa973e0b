"""`python -m serving.engine_guard --lifeline FD [--grace S] -- ARGV...`: run an engine that
cannot outlive its supervisor.

The guard is the one child the supervisor starts. It leads the engine's process group (the
supervisor starts it in a session of its own, so that Ctrl-C in the terminal reaches the
gateway, which drains its streams and flushes usage, and not the engine those streams read
from), starts ARGV in that group, and waits for one of:

- the supervisor's death: FD is the read end of a pipe whose only write end the supervisor
  holds, so the kernel closes it when the supervisor dies in any way, SIGKILL included (and
  whichever of its threads started the guard, unlike PR_SET_PDEATHSIG, which follows the
  forking thread). A change of parent pid is checked as well, in case a forked copy of the
  supervisor holds the write end;
- SIGTERM, SIGINT or SIGHUP (the supervisor stopping the engine);
- the engine's exit.

Then it ends the engine's whole tree: SIGTERM to every process of its group and to every
descendant (the guard is a child subreaper, so a worker orphaned by the engine, or one that
left the group with `setsid()`, still counts as its descendant), SIGKILL to what is left after
the grace, and exits with the engine's exit status (or 1 when the engine did not exit on
its own).

The engine itself gets PR_SET_PDEATHSIG(SIGTERM), so that even a SIGKILL of the guard alone
asks it to stop (the guard is single-threaded, so the thread caveat does not apply); the
supervisor also sweeps the group after the guard has exited. Standard library and psutil
only: the guard must start fast and never fail on an import.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
KILL_WAIT_S = 5.0
"""How long SIGKILLed processes get to disappear before the guard gives up on them."""


def _load_prctl() -> Callable[..., int] | None:
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return fn
    except (OSError, AttributeError):  # not Linux
        return None


# Resolved at import, in the parent: a child between fork and exec must not dlopen (another
# thread of the parent may have held the loader's lock when it forked).
_PRCTL = _load_prctl()


def _prctl(option: int, arg: int) -> bool:
    # prctl is variadic and reads unsigned longs: pass them as such, not as C ints.
    zero = ctypes.c_ulong(0)
    return _PRCTL is not None and _PRCTL(option, ctypes.c_ulong(arg), zero, zero, zero) == 0


def set_parent_death_signal(sig: int, parent_pid: int) -> None:
    """In a freshly forked child (a `preexec_fn`): receive `sig` when the thread of
    `parent_pid` that forked it dies. The parent may be gone before this runs (the signal
    would never come), hence the check right after."""
    if _prctl(PR_SET_PDEATHSIG, int(sig)) and os.getppid() != parent_pid:
        os._exit(1)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int, *, exclude: int | None = None) -> list[psutil.Process]:
    """The live processes of process group `pgid`."""
    out = []
    for p in psutil.process_iter():
        if p.pid == exclude:
            continue
        try:
            if os.getpgid(p.pid) == pgid and _alive(p):
                out.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def end_tree(
    find: Callable[[], list[psutil.Process]],
    grace_s: float,
    *,
    reap: Callable[[], None] = lambda: None,
) -> list[psutil.Process]:
    """SIGTERM every process `find()` names, then SIGKILL those still there after `grace_s`.
    `find()` is asked again each round (a process may start another while it stops), and a
    process it named once stays a target (it may leave the group while it stops). Returns
    those that outlived even SIGKILL's wait (an uninterruptible sleep): none, normally."""
    targets: dict[int, psutil.Process] = {}

    def remaining() -> list[psutil.Process]:
        for p in find():
            targets.setdefault(p.pid, p)
        return [p for p in targets.values() if _alive(p)]

    _signal_all(remaining(), signal.SIGTERM)
    left: list[psutil.Process] = []
    for sig, wait_s in ((None, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        deadline = time.monotonic() + wait_s
        while True:
            reap()
            left = remaining()
            if sig is not None:
                _signal_all(left, sig)
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not left:
            return []
    return left


class Guard:
    def __init__(self, argv: list[str], lifeline: int, grace_s: float) -> None:
        self.argv = argv
        self.lifeline = lifeline
        self.grace_s = grace_s
        self.parent = os.getppid()
        self.pgid = os.getpgrp()
        self.engine: subprocess.Popen[bytes] | None = None
        self.engine_status: int | None = None
        self.stop_signal: int | None = None

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        guard_pid = os.getpid()
        self.engine = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM, guard_pid),
        )
        reason = self._watch(wake_r)
        left = end_tree(self._tree, self.grace_s, reap=self._reap)
        if left:
            sys.stderr.write(f"engine guard: still running after SIGKILL: {left}\n")
        sys.stderr.write(f"engine guard: {reason}; engine tree ended\n")
        if self.engine_status is None:
            return 1
        return self.engine_status if self.engine_status >= 0 else 128 - self.engine_status

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum

    def _watch(self, wake_r: int) -> str:
        """Until the supervisor goes, asks to stop, or the engine exits; says which."""
        while True:
            self._reap()
            if self.engine_status is not None:
                return f"engine exited with status {self.engine_status}"
            if self.stop_signal is not None:
                return f"{signal.Signals(self.stop_signal).name} received"
            if os.getppid() != self.parent:
                return "supervisor gone (reparented)"
            readable, _, _ = select.select([self.lifeline, wake_r], [], [], 1.0)
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            if self.lifeline in readable and not os.read(self.lifeline, 512):
                return "supervisor gone (lifeline closed)"

    def _reap(self) -> None:
        """Collect every exited child: the engine, and orphans adopted as subreaper."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.engine is not None and pid == self.engine.pid:
                self.engine_status = os.waitstatus_to_exitcode(status)
                self.engine.returncode = self.engine_status

    def _tree(self) -> list[psutil.Process]:
        me = psutil.Process()
        procs = {p.pid: p for p in group_members(self.pgid, exclude=me.pid)}
        with contextlib.suppress(psutil.Error):
            for p in me.children(recursive=True):
                if _alive(p):
                    procs.setdefault(p.pid, p)
        return list(procs.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.engine_guard")
    parser.add_argument("--lifeline", type=int, required=True, help="read end of a pipe")
    parser.add_argument("--grace", type=float, default=5.0, help="SIGTERM to SIGKILL, seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no engine command after --")
    return Guard(command, args.lifeline, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
