"""Starting and stopping the real processes end-to-end tests run: vLLM and the gateway."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from serving.supervisor import VLLMServerSpec
from support.pg import free_port

REPO = Path(__file__).resolve().parents[2]
ROYALTY = str(Path(sys.executable).with_name("royalty"))


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready in {timeout_s}s (last: {last})")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def vllm_server(base_path: str, served_name: str, log_path: Path) -> Iterator[str]:
    spec = VLLMServerSpec(model_path=base_path, served_name=served_name, port=free_port())
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            spec.argv(), env=spec.env(), stdout=log, stderr=log, start_new_session=True
        )
    try:
        wait_http(spec.url + "/health", 300, proc)
        yield spec.url
    finally:
        stop(proc)


class Gateway:
    """`royalty up` as a child process, restartable on the same data directory."""

    def __init__(self, data_dir: Path, args: list[str], env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "gateway.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True, timeout_s: float = 1200) -> Gateway:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [ROYALTY, "up", "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--no-demo-key", *self.args]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        if wait:
            wait_http(self.base_url + "/healthz", timeout_s, self.proc)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL the gateway alone: its log must carry what was answered
        self.proc.wait()

    def kill9_group(self) -> None:
        """SIGKILL `royalty up`'s whole process group, as an OOM killer or `kill -9 -PGID`
        would: nothing in the group gets to clean up."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def descendants(self) -> list[psutil.Process]:
        """Every live process below `royalty up` (engine, workers), whatever its group."""
        if not self.running():
            return []
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> int:
        assert self.proc is not None
        return stop(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def engine_processes(port: int) -> list[psutil.Process]:
    """Live vLLM OpenAI servers started for `port` (by their command line), wherever they
    are in the process tree: an orphaned engine has no parent to find it by."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if any("vllm.entrypoints" in a for a in argv) and _port_arg(argv) == str(port):
            found.append(proc)
    return found


def _port_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--port="):
            return arg.split("=", 1)[1]
    return None


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `procs` still running (a zombie has exited: it only awaits its parent)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def create_key(database_url: str, account: str, *extra: str, credit: str | None = "100") -> str:
    """A new key for `account`, whose credit is topped up by `credit` (decimal credits; None
    leaves a new account at zero, where paid requests get 402)."""
    out = subprocess.run(
        [ROYALTY, "keys", "create", "--account", account, "--database-url", database_url, *extra],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    key = out.stdout.strip()
    assert key.startswith("rk-") and "\n" not in key, out.stdout
    if credit is not None:
        subprocess.run(
            [ROYALTY, "credits", "add", "--account", account, "--amount", credit,
             "--database-url", database_url],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    return key
