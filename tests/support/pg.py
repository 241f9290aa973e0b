"""Real PostgreSQL for tests: the machine's server, or private servers from the pgserver wheel.

The fixtures in tests/conftest.py hand each test a fresh, migrated database of its own on the
server named by `TEST_DATABASE_URL` (default: the machine's PostgreSQL on 127.0.0.1:5432). When that server
cannot be reached, a private server from the `pgserver` wheel's binaries runs for the session
instead, so the suite needs no setup beyond `pip install`.

`private_postgres` is a throwaway server that the test itself may stop and start (outage
tests); it never touches the shared one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from royalty.db import create_engine, migrate

log = logging.getLogger(__name__)

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_DB_NAME = re.compile(r"^[a-z0-9_]+$")


def _pg_bin(name: str) -> str:
    # The wheel's own binaries, found without importing pgserver (whose import has side
    # effects: a runtime directory, a lock file).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver wheel is not installed: pip install pgserver")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _os_user() -> str | None:
    """PostgreSQL refuses to run as root; under root, run it as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "pgserver"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    from pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")
    return "pgserver"


class PrivatePostgres:
    """A PostgreSQL server with its own data directory and TCP port, for one test (or one
    session). Stopping it with mode="immediate" is a crash: no checkpoint, WAL recovery on
    the next start."""

    def __init__(self) -> None:
        self.user = _os_user()
        # Under /tmp rather than pytest's tmp_path: the server's OS user must reach it.
        self.base = Path(tempfile.mkdtemp(prefix="royalty-pg-"))
        if self.user is not None:
            shutil.chown(self.base, self.user)
        self.data = self.base / "data"
        self.logfile = self.base / "server.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")  # fmt: skip

    def _run(self, *argv: str) -> None:
        proc = subprocess.run(
            argv, user=self.user, capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            server_log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                f"server log:\n{server_log[-4000:]}"
            )

    def start(self) -> None:
        # fsync=off is safe here: these tests crash the server process, never the OS, and
        # the page cache survives a process crash. synchronous_commit stays on, so a COMMIT
        # the client saw is in the WAL the restart replays.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.base} -c fsync=off"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w",
                  "-t", "60", "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running:
            try:
                self.stop("immediate")
            except RuntimeError:
                log.exception("could not stop the private PostgreSQL in %s", self.base)
        shutil.rmtree(self.base, ignore_errors=True)


async def reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("PostgreSQL at %s unreachable (%r); using a private server", url, exc)
        return False
    await conn.close()
    return True


async def create_database(admin_url: str) -> str:
    """A new, empty, uniquely named database on the server at `admin_url`; returns its URL."""
    name = f"royalty_test_{uuid.uuid4().hex[:16]}"
    assert _DB_NAME.match(name)
    conn = await asyncpg.connect(admin_url)
    try:
        # Identifiers cannot be bound parameters; the name is generated and checked above.
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    assert name is not None and _DB_NAME.match(name)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def migrated(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
