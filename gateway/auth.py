"""API keys: creation, lookup by digest, scopes.

A key is 256 random bits shown once; only its SHA-256 digest is stored (a slow hash adds
nothing for keys of that entropy), and keys are never logged. Lookups are cached briefly so
the hot path does not touch the database on every request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.accounts import UPSERT_ACCOUNT

SCOPES = frozenset({"inference", "contributor", "curator", "admin"})
KEY_PREFIX = "rk-"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: int
    account_id: int
    account: str
    scopes: frozenset[str]
    rpm_limit: int | None = None
    tpm_limit: int | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    s = frozenset(scopes)
    unknown = s - SCOPES
    if unknown or not s:
        raise ValueError(f"unknown scopes {sorted(unknown)}; choose from {sorted(SCOPES)}")
    return s


class KeyStoreUnavailable(Exception):
    """The key database cannot be reached."""


class KeyStore(Protocol):
    async def create(
        self, account: str, scopes: frozenset[str], rpm: int | None, tpm: int | None
    ) -> tuple[str, KeyInfo]: ...

    async def lookup(self, key_digest: bytes) -> KeyInfo | None: ...

    async def revoke(self, key_id: int) -> bool: ...


# --- named SQL (gateway owns `api_keys`; `accounts` is core's, `core.accounts`) ------------
INSERT_KEY = text(
    """
    INSERT INTO api_keys (account_id, key_sha256, prefix, scopes, rpm_limit, tpm_limit)
    VALUES (:account_id, :digest, :prefix, :scopes, :rpm, :tpm)
    RETURNING id
    """
)
LOOKUP_KEY = text(
    """
    SELECT k.id, k.account_id, a.name, k.scopes, k.rpm_limit, k.tpm_limit
    FROM api_keys k JOIN accounts a ON a.id = k.account_id
    WHERE k.key_sha256 = :digest AND k.revoked_at IS NULL
    """
)
REVOKE_KEY = text(
    "UPDATE api_keys SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL RETURNING id"
)


class PostgresKeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self, account: str, scopes: frozenset[str], rpm: int | None, tpm: int | None
    ) -> tuple[str, KeyInfo]:
        key = new_key()
        async with self.engine.begin() as conn:
            account_id = (await conn.execute(UPSERT_ACCOUNT, {"name": account})).scalar_one()
            key_id = (
                await conn.execute(
                    INSERT_KEY,
                    {
                        "account_id": account_id,
                        "digest": digest(key),
                        "prefix": key[:10],
                        "scopes": sorted(scopes),
                        "rpm": rpm,
                        "tpm": tpm,
                    },
                )
            ).scalar_one()
        return key, KeyInfo(key_id, account_id, account, scopes, rpm, tpm)

    async def lookup(self, key_digest: bytes) -> KeyInfo | None:
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(LOOKUP_KEY, {"digest": key_digest})).first()
        except (SQLAlchemyError, OSError) as e:
            raise KeyStoreUnavailable(str(e.__class__.__name__)) from e
        if row is None:
            return None
        return KeyInfo(row[0], row[1], row[2], frozenset(row[3]), row[4], row[5])

    async def revoke(self, key_id: int) -> bool:
        async with self.engine.begin() as conn:
            return (await conn.execute(REVOKE_KEY, {"id": key_id})).first() is not None


class InMemoryKeyStore:
    def __init__(self) -> None:
        self._accounts: dict[str, int] = {}
        self._keys: dict[bytes, KeyInfo] = {}

    async def create(
        self, account: str, scopes: frozenset[str], rpm: int | None, tpm: int | None
    ) -> tuple[str, KeyInfo]:
        account_id = self._accounts.setdefault(account, len(self._accounts) + 1)
        key = new_key()
        info = KeyInfo(len(self._keys) + 1, account_id, account, scopes, rpm, tpm)
        self._keys[digest(key)] = info
        return key, info

    async def lookup(self, key_digest: bytes) -> KeyInfo | None:
        return self._keys.get(key_digest)

    async def revoke(self, key_id: int) -> bool:
        for d, info in list(self._keys.items()):
            if info.key_id == key_id:
                del self._keys[d]
                return True
        return False


class Authenticator:
    """Bearer key → `KeyInfo`, with a short positive and negative cache.

    While the key database is unreachable, keys seen before keep working from the stale cache
    (usage is captured locally regardless), and unknown keys get a 503, not a 401."""

    def __init__(self, store: KeyStore, ttl_s: float = 30.0, max_entries: int = 100_000):
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[bytes, tuple[float, KeyInfo | None]] = {}

    async def authenticate(self, key: str) -> KeyInfo | None:
        d = digest(key)
        now = time.monotonic()
        hit = self._cache.get(d)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            info = await self.store.lookup(d)
        except KeyStoreUnavailable:
            if hit is not None and hit[1] is not None:
                return hit[1]
            raise
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        # Unknown keys are cached for less time so a fresh key works almost at once.
        self._cache[d] = (now + (self.ttl_s if info else min(self.ttl_s, 2.0)), info)
        return info

    def forget(self) -> None:
        self._cache.clear()
