"""One `royalty up` for the adversarial suite: the embedded, supervised vLLM engine (not
`--engine-url`: the kill -9 scenario is about the engine outliving its supervisor), a fresh
database on the machine's PostgreSQL, the demo models and the shared demo adapter cache, and
the usage log on a small tmpfs of its own (so that its disk can be filled)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from support.procs import REPO, Gateway, alive, engine_processes, free_port

from core.accounts import account_id
from metering.ledger.book import PostgresLedger
from royalty.admin import create_key
from royalty.db import create_engine
from royalty.settings import Settings

log = logging.getLogger(__name__)

TMPFS_BYTES = 64 << 20
"""Four times the 16 MiB the usage log keeps free by default (ROYALTY_USAGE_LOG_MIN_FREE_MB):
healthy until the filler takes the rest."""


@dataclass
class Tmpfs:
    """A tmpfs mounted for the test (or the reason it could not be)."""

    path: Path
    mounted: bool = False
    reason: str = ""

    @classmethod
    def mount(cls, path: Path, size: int = TMPFS_BYTES) -> Tmpfs:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return cls(path, reason="mounting a tmpfs needs root (the suite does not run as root)")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            return cls(path, reason=f"mount -t tmpfs failed: {proc.stderr.strip() or proc.stdout}")
        return cls(path, mounted=True)

    def unmount(self) -> None:
        if self.mounted:
            for argv in (["umount", str(self.path)], ["umount", "-l", str(self.path)]):
                if subprocess.run(argv, capture_output=True, timeout=30).returncode == 0:
                    self.mounted = False
                    return
            log.error("could not unmount the tmpfs at %s", self.path)

    def fill(self, name: str = "FILLER") -> Path:
        """Take every free byte with one file; returns it (delete it to give space back)."""
        filler = self.path / name
        chunk = b"\0" * (1 << 20)
        with open(filler, "wb", buffering=0) as f:
            for size in (1 << 20, 4096, 1):
                piece = chunk[:size]
                while True:
                    try:
                        f.write(piece)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        return filler


@dataclass
class Stack:
    gateway: Gateway
    database_url: str
    engine_port: int
    usage_log_dir: Path
    tmpfs: Tmpfs
    accounts: list[str] = field(default_factory=list)
    """The suite's consumer accounts (money is checked on these)."""

    @classmethod
    def create(cls, root: Path, database_url: str, models_root: Path) -> Stack:
        tmpfs = Tmpfs.mount(root / "usage-tmpfs")
        usage_log = tmpfs.path / "usage-log"
        engine_port = free_port()
        env = {
            "ROYALTY_DEMO": "1",
            "ROYALTY_ADAPTERS_DIR": str(REPO / ".royalty" / "adapters"),
            "ROYALTY_ENGINE_PORT": str(engine_port),
            "ROYALTY_USAGE_LOG_DIR": str(usage_log),
            "ROYALTY_SHIP_INTERVAL_S": "0.1",
            # Influence jobs are queued (the enqueuer is on the money path's side: poison
            # prompts reach it), but no worker scores them: it would take the shared CPUs.
            "ROYALTY_INFLUENCE_WORKER": "0",
        }
        gw = Gateway(
            root / "home",
            ["--models-dir", str(models_root), "--database-url", database_url],
            env=env,
        )
        gw.env.pop("DATABASE_URL", None)
        gw.env.pop("ROYALTY_ENGINE_URLS", None)
        return cls(gw, database_url, engine_port, usage_log, tmpfs)

    @property
    def base_url(self) -> str:
        return self.gateway.base_url

    def start(self, timeout_s: float) -> None:
        self.gateway.start(timeout_s=timeout_s)

    def ensure_up(self, timeout_s: float = 900) -> str:
        """Restart the stack if an earlier scenario left it dead; says what it did."""
        if self.gateway.running():
            return ""
        self.kill_engines()
        self.start(timeout_s)
        return "stack restarted after an earlier scenario left it down"

    def engines(self) -> list[psutil.Process]:
        return engine_processes(self.engine_port)

    def kill_engines(self) -> list[int]:
        """SIGKILL leftover engines of this stack (ours: started for our port) and their
        children; returns their pids."""
        procs = self.engines()
        for p in list(procs):
            with contextlib.suppress(psutil.NoSuchProcess):
                procs += p.children(recursive=True)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        return [p.pid for p in procs]

    def shutdown(self) -> list[str]:
        """Stop everything this stack started; returns what had to be forced."""
        forced = []
        if self.gateway.running():
            code = self.gateway.stop()
            if code != 0:
                forced.append(f"royalty up exited {code} on SIGTERM")
        left = alive(self.engines())
        if left:
            forced.append(f"engine processes left behind: {[p.pid for p in left]}")
            self.kill_engines()
        self.tmpfs.unmount()
        return forced

    # --- accounts and keys (in process, through the package APIs the CLI uses) ---------------
    def key(self, account: str, *scopes: str, credit_micros: int = 0) -> str:
        # In a thread of its own: asyncio.run must not touch the test session's event loop.
        with ThreadPoolExecutor(1) as pool:
            coro = self._key(account, list(scopes) or ["inference"], credit_micros)
            return pool.submit(asyncio.run, coro).result()

    async def _key(self, account: str, scopes: list[str], credit: int) -> str:
        settings = Settings().with_(database={"url": self.database_url})
        key = await create_key(settings, account, scopes, 1_000_000, 100_000_000)
        if credit:
            engine = create_engine(self.database_url, pool_size=1)
            try:
                who = await account_id(engine, account)
                await PostgresLedger(engine).top_up(who, credit, "adversarial suite")
            finally:
                await engine.dispose()
            if account not in self.accounts:
                self.accounts.append(account)
        return key


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those of `procs` still alive after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = alive(procs)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)
