"""Administrative operations the CLI (and later the admin API) call."""

from __future__ import annotations

from gateway.auth import PostgresKeyStore, check_scopes
from gateway.db import create_engine, migrate, resolve_database_url
from gateway.settings import Settings


async def migrate_only(settings: Settings) -> None:
    engine = create_engine(
        resolve_database_url(settings.database_url, settings.data_dir), pool_size=1
    )
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def create_key(
    settings: Settings, account: str, scopes: list[str], rpm: int | None, tpm: int | None
) -> str:
    checked = check_scopes(scopes)
    if not account.strip():
        raise ValueError("account name must not be empty")
    for limit in (rpm, tpm):
        if limit is not None and limit < 1:
            raise ValueError("rate limits must be positive")
    engine = create_engine(
        resolve_database_url(settings.database_url, settings.data_dir), pool_size=1
    )
    try:
        await migrate(engine)
        key, _ = await PostgresKeyStore(engine).create(account, checked, rpm, tpm)
        return key
    finally:
        await engine.dispose()


async def revoke_key(settings: Settings, key_id: int) -> bool:
    engine = create_engine(
        resolve_database_url(settings.database_url, settings.data_dir), pool_size=1
    )
    try:
        return await PostgresKeyStore(engine).revoke(key_id)
    finally:
        await engine.dispose()
