"""The operator's actions the CLI calls: database, API keys, datanets, training an adapter in
the foreground, credits, penalties, reports, dead letters. Each opens what it needs and calls
the owning package's API; the month close is `royalty.month_close`, the workers are
`royalty.workers`."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.datanets import AcceptanceMode, Datanet, Decision, StoredRecord
from attribution.records import SubmissionResult
from attribution.rehash import RehashReport
from attribution.service import DatanetService
from attribution.snapshots import Snapshot
from core.accounts import account_id, account_names, existing_account_id
from gateway.auth import PostgresKeyStore, check_scopes
from royalty.db import create_engine, migrate, resolve_database_url
from royalty.settings import Settings

if TYPE_CHECKING:
    from factory.adapters import AdapterRecipe
    from metering.ledger.book import Balance


async def migrate_only(settings: Settings) -> None:
    engine = create_engine(
        resolve_database_url(settings.database.url, settings.data_dir), pool_size=1
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
        resolve_database_url(settings.database.url, settings.data_dir), pool_size=1
    )
    try:
        await migrate(engine)
        key, _ = await PostgresKeyStore(engine).create(account, checked, rpm, tpm)
        return key
    finally:
        await engine.dispose()


async def revoke_key(settings: Settings, key_id: int) -> bool:
    engine = create_engine(
        resolve_database_url(settings.database.url, settings.data_dir), pool_size=1
    )
    try:
        return await PostgresKeyStore(engine).revoke(key_id)
    finally:
        await engine.dispose()


# --- datanets (the CLI's `royalty datanet ...`) -----------------------------------------------
@asynccontextmanager
async def _datanets(settings: Settings) -> AsyncIterator[DatanetService]:
    engine = create_engine(
        resolve_database_url(settings.database.url, settings.data_dir), pool_size=2
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


# --- adapters (the CLI's `royalty factory train`) ----------------------------------------------
async def train_adapter(
    settings: Settings,
    datanet: str,
    snapshot: str | None,
    name: str,
    owner: str,
    recipe: AdapterRecipe,
    replace: bool,
) -> dict[str, Any]:
    """Train an adapter on a snapshot in this process, write its lineage and register it
    (`royalty.training.train_on_snapshot`); returns the lineage summary."""
    from attribution.lineage import LineageService
    from factory.build import load_manifest
    from royalty.runtime import demo_models_dir
    from royalty.training import train_on_snapshot

    base = load_manifest(demo_models_dir(settings), verify=False)
    async with _datanets(settings) as svc:
        owner_id = await account_id(svc.engine, owner)
        trained = await train_on_snapshot(
            svc,
            LineageService(svc.engine),
            base,
            settings.resolved_adapters_dir,
            datanet=datanet,
            name=name,
            owner_account_id=owner_id,
            snapshot_id=snapshot,
            recipe=recipe,
            replace=replace,
            progress=True,
        )
    a, lin = trained.adapter, trained.build.lineage
    return {
        "adapter": a.name,
        "owner": a.owner,
        "datanet": a.datanet,
        "snapshot": a.snapshot_id,
        "records": a.record_count,
        "weights_sha256": a.weights_sha256,
        "lineage_sha256": a.lineage_sha256,
        "path": a.path,
        "final_loss": lin["metrics"]["final_loss"],
        "cached": trained.build.cached,
    }


# --- credits and penalties (the CLI's `royalty credits ...`, `royalty payouts penalize`) ------
async def add_credits(
    engine: AsyncEngine, account: str, micros: int, idempotency_key: str | None
) -> int:
    """Top `account` (created if new) up by `micros`; returns its available credit. With
    `idempotency_key`, at most once per key, bound to the same meaning as the HTTP top-up's
    (`IdempotencyConflict` when the key was used with other arguments)."""
    from gateway.routes.metering import topup_fingerprint
    from metering.ledger.book import PostgresLedger
    from metering.money import format_micros

    memo = f"credits add {format_micros(micros)}"
    ledger = PostgresLedger(engine)
    who = await account_id(engine, account)
    if idempotency_key is None:
        await ledger.top_up(who, micros, memo)
        return (await ledger.balance("consumer", who)).available
    fingerprint = topup_fingerprint(account, micros, True)
    return (await ledger.top_up_once(idempotency_key, fingerprint, who, micros, memo)).available


async def credit_balance(engine: AsyncEngine, account: str) -> Balance:
    """An existing consumer account's balance, held and available credit."""
    from metering.ledger.book import PostgresLedger

    return await PostgresLedger(engine).balance(
        "consumer", await existing_account_id(engine, account)
    )


async def penalize(
    engine: AsyncEngine,
    reason: str,
    *,
    contributor: str | None = None,
    record: int | None = None,
    adapter: str = "",
) -> tuple[int, int]:
    """Withhold one training record's (`record`) or a contributor's (`contributor`, only
    `adapter`'s credits when given) future credits and reverse the open months' credits
    into withheld. Returns (penalty id, micro-credits reversed); ValueError when the record
    or account does not exist."""
    from metering.ledger.book import PostgresLedger

    if record is not None:
        from attribution.access import readable_record
        from attribution.errors import NotFound
        from metering.ledger.record_penalties import penalize_record

        async with engine.connect() as conn:
            try:
                found = await readable_record(conn, record, None)
            except NotFound as e:
                raise ValueError(str(e)) from None
        return await penalize_record(engine, record, found.contributor_account_id, reason)
    assert contributor is not None
    who = await existing_account_id(engine, contributor)
    return await PostgresLedger(engine).penalize(who, adapter, reason)


async def month_report(engine: AsyncEngine, month: dt.date, account: str | None) -> Any:
    """The data of `month`'s payout report: the operator's, or `account`'s own."""
    from metering.reports.data import operator_report, payee_report

    if account is None:
        return await operator_report(engine, month)
    return await payee_report(engine, month, await existing_account_id(engine, account))


# --- dead letters (the CLI's `royalty deadletters replay|discard`) ----------------------------
async def replay_dead_letter(
    engine: AsyncEngine, settings: Settings, letter_id: int, note: str
) -> str:
    """Put a dead item back on its way through the package that owns its queue; returns what
    happened, one line. LookupError when it is not a dead letter."""
    from core.deadletters import PostgresDeadLetterStore

    store = PostgresDeadLetterStore(engine)
    letter = await store.get(letter_id)
    if letter is None or letter.state != "dead":
        state = "no such letter" if letter is None else f"it is {letter.state}"
        raise LookupError(f"dead letter {letter_id} cannot be replayed: {state}")
    if letter.queue == "usage":
        from metering.usage.store import replay_dead_letter as replay_usage

        record = await replay_usage(engine, letter_id, note)
        return f"usage record {record.request_id} stored (model {record.model!r})"
    if letter.queue == "posting":
        from metering.ledger.posting import requeue_dead_letter

        return f"usage event {await requeue_dead_letter(engine, letter_id, note)} queued"
    from gateway.influence import influence_queue
    from gateway.influence import replay_dead_letter as replay_job

    queue = influence_queue(engine, settings.influence.retention_s)
    job = await replay_job(queue, store, letter_id, note)
    return f"influence job {job.request_id} queued"


async def discard_dead_letter(engine: AsyncEngine, letter_id: int, reason: str) -> bool:
    """Give a dead item up for good; False when it is not a dead letter (resolved, or no such
    id)."""
    from core.deadletters import PostgresDeadLetterStore

    store = PostgresDeadLetterStore(engine)
    letter = await store.get(letter_id)
    if letter is not None and letter.state == "dead" and letter.queue == "posting":
        from metering.ledger.posting import discard_dead_letter as discard_event

        await discard_event(engine, letter_id, reason)
        return True
    forget = letter is not None and letter.queue == "influence"
    return await store.mark_discarded(letter_id, reason, forget_payload=forget) is not None
