"""Administrative operations the CLI (and later the admin API) call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.datanets import AcceptanceMode, Datanet, Decision, StoredRecord
from attribution.records import SubmissionResult
from attribution.rehash import RehashReport
from attribution.service import DatanetService
from attribution.snapshots import Snapshot
from gateway.auth import UPSERT_ACCOUNT, PostgresKeyStore, check_scopes
from royalty.db import create_engine, migrate, resolve_database_url
from royalty.settings import Settings


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


# --- accounts (gateway owns `accounts`) -------------------------------------------------------
SELECT_ACCOUNT_ID = text("SELECT id FROM accounts WHERE name = :name")
SELECT_ACCOUNT_NAMES = text("SELECT id, name FROM accounts WHERE id = ANY(:ids)")


async def account_id(engine: AsyncEngine, name: str) -> int:
    """The id of the account named `name`, created if new."""
    if not name.strip():
        raise ValueError("account name must not be empty")
    async with engine.begin() as conn:
        return int((await conn.execute(UPSERT_ACCOUNT, {"name": name})).scalar_one())


async def existing_account_id(engine: AsyncEngine, name: str) -> int:
    """The id of the account named `name`; ValueError when there is none."""
    async with engine.connect() as conn:
        found = (await conn.execute(SELECT_ACCOUNT_ID, {"name": name})).scalar_one_or_none()
    if found is None:
        raise ValueError(f"no account named {name!r}")
    return int(found)


async def account_names(engine: AsyncEngine, ids: Iterable[int]) -> dict[int, str]:
    async with engine.connect() as conn:
        rows = (await conn.execute(SELECT_ACCOUNT_NAMES, {"ids": sorted(set(ids))})).all()
    return {r.id: r.name for r in rows}


# --- datanets (the CLI's `royalty datanet ...`) -----------------------------------------------
@asynccontextmanager
async def _datanets(settings: Settings) -> AsyncIterator[DatanetService]:
    engine = create_engine(
        resolve_database_url(settings.database_url, settings.data_dir), pool_size=2
    )
    try:
        await migrate(engine)
        yield DatanetService(engine)
    finally:
        await engine.dispose()


class DatanetRow(msgspec.Struct):
    datanet: Datanet
    owner: str


async def create_datanet(
    settings: Settings,
    name: str,
    owner: str,
    licence: str,
    mode: AcceptanceMode,
    description: str,
    curators: Sequence[str] = (),
) -> Datanet:
    async with _datanets(settings) as svc:
        owner_id = await account_id(svc.engine, owner)
        curator_ids = [await account_id(svc.engine, c) for c in curators]
        return await svc.create_datanet(
            name, owner_id, licence, mode, description, curators=curator_ids
        )


async def list_datanets(settings: Settings) -> list[DatanetRow]:
    async with _datanets(settings) as svc:
        datanets = await svc.list_datanets()
        names = await account_names(svc.engine, (d.owner_account_id for d in datanets))
    return [DatanetRow(d, names.get(d.owner_account_id, str(d.owner_account_id))) for d in datanets]


async def import_records(
    settings: Settings,
    lines: Sequence[tuple[int, bytes]],
    datanet: str,
    contributor: str,
    *,
    atomic: bool = False,
    chunk: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> list[SubmissionResult]:
    """Import JSONL records (line number, raw line) as `contributor` (created if new); a
    trusted import, so the per-contributor rate limit does not apply. With `atomic`, one
    all-or-nothing batch (`BulkRejected` if any record is rejected). Results are in order,
    `index` being the position in `lines`."""
    async with _datanets(settings) as svc:
        d = await svc.get_datanet_by_name(datanet)
        who = await account_id(svc.engine, contributor)
        raws = [raw for _, raw in lines]
        if atomic:
            results = await svc.submit_bulk(d.id, who, raws, atomic=True, rate_limit=False)
            if progress is not None:
                progress(len(raws))
            return results
        results = []
        for start in range(0, len(raws), chunk):
            part = await svc.submit_bulk(d.id, who, raws[start : start + chunk], rate_limit=False)
            for r in part:
                r.index += start
            results.extend(part)
            if progress is not None:
                progress(len(part))
        return results


async def publish_datanet(settings: Settings, name: str) -> Snapshot:
    async with _datanets(settings) as svc:
        d = await svc.get_datanet_by_name(name)
        return await svc.publish(d.id)


async def rehash_datanets(settings: Settings, name: str | None) -> list[RehashReport]:
    """Bring stored content hashes to the current normalisation (one datanet, or all)."""
    async with _datanets(settings) as svc:
        if name is not None:
            return [await svc.rehash((await svc.get_datanet_by_name(name)).id)]
        return [await svc.rehash(d.id) for d in await svc.list_datanets()]


async def pending_records(settings: Settings, name: str) -> list[StoredRecord]:
    async with _datanets(settings) as svc:
        d = await svc.get_datanet_by_name(name)
        return await svc.pending(d.id, None)


async def decide_record(
    settings: Settings, record_id: int, curator: str, approve: bool, reason: str
) -> Decision:
    """A curator's decision on a pending or flagged record, recorded under `curator`'s name
    (who must be the datanet's owner or one of its curators)."""
    async with _datanets(settings) as svc:
        who = await existing_account_id(svc.engine, curator)
        return await svc.decide(record_id, who, approve, reason)
