"""Dashboard sign-in sessions, kept server-side.

Signing in at `/dashboard/login` with an admin key creates a session: the browser's cookie
holds a random 256-bit session id, never the key, and the store keeps only the id's SHA-256
digest, the id of the key it was opened with, and two times. A session ends when it has been
idle for `idle_s` (8 h), `absolute_s` (24 h) after sign-in whatever its use, at sign-out
(deleted), or as soon as its key is revoked (every lookup joins the live key).

`PostgresDashboardSessions` is the one `royalty up` uses: every gateway replica behind a load
balancer sees the same sessions, and the database's clock is the one clock. Expired rows are
deleted at each sign-in. `InMemoryDashboardSessions` is the fake for tests and single-process
harnesses: its sessions live in one process and see revocations only through `end_key`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth import KeyInfo, KeyStoreUnavailable

IDLE_S = 8 * 3600
ABSOLUTE_S = 24 * 3600


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def session_digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


class DashboardSessions(Protocol):
    async def create(self, key: KeyInfo) -> str:
        """A new session for `key`; returns its id (shown to the browser once, as a cookie)."""
        ...

    async def lookup(self, session_id: str) -> KeyInfo | None:
        """The live key of a live session (marking it used), or None. Raises
        `KeyStoreUnavailable` when the store cannot be reached."""
        ...

    async def delete(self, session_id: str) -> None: ...


# --- Postgres (gateway owns `dashboard_sessions`) ---------------------------------------------
INSERT_SESSION = text(
    "INSERT INTO dashboard_sessions (session_sha256, key_id) VALUES (:digest, :key_id)"
)
SWEEP_SESSIONS = text(
    """
    DELETE FROM dashboard_sessions
    WHERE seen_at < now() - make_interval(secs => :idle_s)
       OR created_at < now() - make_interval(secs => :absolute_s)
    """
)
# One statement: the session is live (not idle too long, not too old), its key is not revoked;
# it is marked used, and the key comes back as the gateway's `KeyInfo`.
TOUCH_SESSION = text(
    """
    UPDATE dashboard_sessions s SET seen_at = now()
    FROM api_keys k JOIN accounts a ON a.id = k.account_id
    WHERE s.session_sha256 = :digest AND k.id = s.key_id AND k.revoked_at IS NULL
      AND s.seen_at >= now() - make_interval(secs => :idle_s)
      AND s.created_at >= now() - make_interval(secs => :absolute_s)
    RETURNING k.id, k.account_id, a.name, k.scopes, k.rpm_limit, k.tpm_limit
    """
)
DELETE_SESSION = text("DELETE FROM dashboard_sessions WHERE session_sha256 = :digest")


class PostgresDashboardSessions:
    def __init__(
        self, engine: AsyncEngine, *, idle_s: float = IDLE_S, absolute_s: float = ABSOLUTE_S
    ) -> None:
        self.engine = engine
        self.idle_s = float(idle_s)
        self.absolute_s = float(absolute_s)

    def _ages(self) -> dict[str, float]:
        return {"idle_s": self.idle_s, "absolute_s": self.absolute_s}

    async def create(self, key: KeyInfo) -> str:
        session_id = new_session_id()
        try:
            async with self.engine.begin() as conn:
                await conn.execute(SWEEP_SESSIONS, self._ages())
                await conn.execute(
                    INSERT_SESSION, {"digest": session_digest(session_id), "key_id": key.key_id}
                )
        except (SQLAlchemyError, OSError) as e:
            raise KeyStoreUnavailable(e.__class__.__name__) from e
        return session_id

    async def lookup(self, session_id: str) -> KeyInfo | None:
        try:
            async with self.engine.begin() as conn:
                row = (
                    await conn.execute(
                        TOUCH_SESSION, {"digest": session_digest(session_id), **self._ages()}
                    )
                ).first()
        except (SQLAlchemyError, OSError) as e:
            raise KeyStoreUnavailable(e.__class__.__name__) from e
        if row is None:
            return None
        return KeyInfo(row[0], row[1], row[2], frozenset(row[3]), row[4], row[5])

    async def delete(self, session_id: str) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(DELETE_SESSION, {"digest": session_digest(session_id)})
        except (SQLAlchemyError, OSError) as e:
            raise KeyStoreUnavailable(e.__class__.__name__) from e


# --- in memory --------------------------------------------------------------------------------
@dataclass(slots=True)
class _Session:
    key: KeyInfo
    created: float
    seen: float


class InMemoryDashboardSessions:
    def __init__(
        self,
        *,
        idle_s: float = IDLE_S,
        absolute_s: float = ABSOLUTE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.clock = clock
        self._sessions: dict[bytes, _Session] = {}

    def _live(self, s: _Session, now: float) -> bool:
        return now - s.seen <= self.idle_s and now - s.created <= self.absolute_s

    async def create(self, key: KeyInfo) -> str:
        now = self.clock()
        for d in [d for d, s in self._sessions.items() if not self._live(s, now)]:
            del self._sessions[d]
        session_id = new_session_id()
        self._sessions[session_digest(session_id)] = _Session(key, now, now)
        return session_id

    async def lookup(self, session_id: str) -> KeyInfo | None:
        now = self.clock()
        s = self._sessions.get(session_digest(session_id))
        if s is None or not self._live(s, now):
            return None
        s.seen = now
        return s.key

    async def delete(self, session_id: str) -> None:
        self._sessions.pop(session_digest(session_id), None)

    def end_key(self, key_id: int) -> None:
        """End every session of a revoked key (the Postgres store needs no call: it joins)."""
        for d in [d for d, s in self._sessions.items() if s.key.key_id == key_id]:
            del self._sessions[d]

    def __len__(self) -> int:
        return len(self._sessions)
