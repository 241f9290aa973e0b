"""The migrations add up: upgrade to the heads, down to nothing, and up again give the same
schema; every table has an owning package, and only that package's history (or the frozen
shared base) creates, changes or drops it; a database an older release left at the old single
head upgrades in place; a wheel ships every history."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from alembic import command
from alembic.script import Script, ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.accounts import account_id, existing_account_id
from royalty.db import (
    OWN_HISTORIES,
    SHARED_BASE,
    SHARED_BASE_HEAD,
    alembic_config,
    history_dir,
    migrate,
    version_locations,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

OWNERS: dict[str, str] = {
    # core: the table every package references, and the dead-letter store
    "accounts": "core",
    "dead_letters": "core",
    # gateway: who may call, shared rate limits, dashboard sign-ins
    "api_keys": "gateway",
    "rate_limit_windows": "gateway",
    "dashboard_sessions": "gateway",
    # attribution: datanets, records, snapshots, adapters and lineage, influence, training
    "datanets": "attribution",
    "datanet_curators": "attribution",
    "contributions": "attribution",
    "curator_decisions": "attribution",
    "snapshots": "attribution",
    "snapshot_records": "attribution",
    "snapshot_levels": "attribution",
    "adapters": "attribution",
    "influence_jobs": "attribution",
    "influence_results": "attribution",
    "training_jobs": "attribution",
    # metering: usage, prices, the ledger, budgets, holds, penalties, statements, top-ups
    "usage_events": "metering",
    "usage_unposted": "metering",
    "usage_postings": "metering",
    "usage_adjustments": "metering",
    "prices": "metering",
    "split_policies": "metering",
    "ledger_accounts": "metering",
    "ledger_months": "metering",
    "ledger_transactions": "metering",
    "ledger_entries": "metering",
    "withheld_items": "metering",
    "penalties": "metering",
    "statements": "metering",
    "budget_reservations": "metering",
    "held_events": "metering",
    "record_penalties": "metering",
    "topup_requests": "metering",
}
"""Which package owns each table. A new table gets its line here, and its revision goes in
that package's history (`<package>/migrations/versions`)."""

SHARED_BASE_REVISIONS = {f"{n:04d}" for n in range(1, int(SHARED_BASE_HEAD) + 1)}

SCHEMA = text(
    """
    SELECT table_name, column_name, data_type, is_nullable
    FROM information_schema.columns WHERE table_schema = 'public'
    ORDER BY table_name, column_name
    """
)
INDEXES = text("SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'")
VERSIONS = text("SELECT version_num FROM alembic_version")


async def _schema(engine: AsyncEngine) -> list[tuple[str, str, str, str]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(SCHEMA)).all()]  # type: ignore[misc]


async def _shapes(engine: AsyncEngine) -> dict[str, frozenset[tuple[str, ...]]]:
    """Each table's columns and indexes: what a revision may have changed about it."""
    shapes: dict[str, set[tuple[str, ...]]] = {}
    async with engine.connect() as conn:
        for table, *column in (await conn.execute(SCHEMA)).all():
            shapes.setdefault(table, set()).add(("column", *column))
        for table, indexdef in (await conn.execute(INDEXES)).all():
            shapes.setdefault(table, set()).add(("index", indexdef))
    shapes.pop("alembic_version", None)
    return {t: frozenset(s) for t, s in shapes.items()}


async def _versions(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(VERSIONS)).scalars().all())


async def _run(engine: AsyncEngine, fn: str, revision: str) -> None:
    def go(sync_conn) -> None:  # type: ignore[no-untyped-def]
        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = sync_conn
        getattr(command, fn)(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(go)


def _scripts(engine: AsyncEngine) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(str(engine.url)))


def _history_of(script: Script) -> str:
    """The history a revision belongs to, by the directory its file is in."""
    where = Path(script.path).resolve().parent
    if where == SHARED_BASE.resolve():
        return "base"
    for package in OWN_HISTORIES:
        if where == history_dir(package).resolve():
            return package
    raise AssertionError(f"{script.path} is in no known history")


async def test_down_and_up_again_gives_the_same_schema(engine: AsyncEngine) -> None:
    at_heads = await _schema(engine)  # the fixture migrated to the heads
    tables = {t for t, *_ in at_heads}
    assert {"accounts", "api_keys", "usage_events"} <= tables  # core, gateway, metering
    assert {"datanets", "contributions", "snapshots"} <= tables  # attribution
    assert await _versions(engine) == set(_scripts(engine).get_heads())
    await _run(engine, "downgrade", "base")
    assert [r for r in await _schema(engine) if r[0] != "alembic_version"] == []
    await _run(engine, "upgrade", "heads")
    assert await _schema(engine) == at_heads


async def test_the_histories_are_the_frozen_base_and_one_branch_per_package(
    engine: AsyncEngine,
) -> None:
    scripts = _scripts(engine)
    by_history: dict[str, set[str]] = {}
    starts: dict[str, list[str]] = {}
    for script in scripts.walk_revisions("base", "heads"):
        history = _history_of(script)
        by_history.setdefault(history, set()).add(script.revision)
        if history == "base":
            assert not script.branch_labels, script.revision
            continue
        # On its package's branch (labels propagate along it), never chained onto another.
        assert script.branch_labels == {history}, (script.revision, script.branch_labels)
        if script.down_revision in SHARED_BASE_REVISIONS:
            starts.setdefault(history, []).append(f"{script.revision} <- {script.down_revision}")
    assert by_history.pop("base") == SHARED_BASE_REVISIONS, "the shared base history is frozen"
    assert set(by_history) == set(OWN_HISTORIES)
    # Each package's history starts once, from the base's head.
    assert starts == {p: [f"{p}_0001 <- {SHARED_BASE_HEAD}"] for p in OWN_HISTORIES}


async def test_each_table_is_changed_only_by_its_owners_history(engine: AsyncEngine) -> None:
    scripts = _scripts(engine)
    in_order = list(reversed(list(scripts.walk_revisions("base", "heads"))))
    await _run(engine, "downgrade", "base")
    before = await _shapes(engine)
    assert before == {}
    for script in in_order:
        await _run(engine, "upgrade", script.revision)
        after = await _shapes(engine)
        touched = {t for t in before.keys() | after.keys() if before.get(t) != after.get(t)}
        unowned = touched - OWNERS.keys()
        assert not unowned, f"{script.revision}: add {sorted(unowned)} to OWNERS"
        history = _history_of(script)
        if history != "base":
            foreign = {t: OWNERS[t] for t in touched if OWNERS[t] != history}
            assert not foreign, f"{script.revision} ({history}'s history) changes {foreign}"
        before = after
    assert before.keys() == OWNERS.keys(), "OWNERS names a table no revision creates"


@pytest.mark.parametrize("old_head", ["0013", SHARED_BASE_HEAD])
async def test_a_database_at_the_old_single_head_upgrades(
    engine: AsyncEngine, old_head: str
) -> None:
    at_heads = await _schema(engine)
    await _run(engine, "downgrade", "base")
    await _run(engine, "upgrade", old_head)  # what an older release's `migrate` left
    assert await _versions(engine) == {old_head}
    survivor = await account_id(engine, "survivor")

    await migrate(engine)
    assert await _versions(engine) == set(_scripts(engine).get_heads())
    assert await _schema(engine) == at_heads
    assert await existing_account_id(engine, "survivor") == survivor
    await migrate(engine)  # again: nothing to do
    assert await _schema(engine) == at_heads


def test_a_wheel_ships_every_history() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    for where in version_locations():
        assert any(where.glob("*.py")), f"{where} has no revisions"
        package, *rest = where.resolve().relative_to(REPO).parts
        assert "/".join([*rest, "*.py"]) in package_data.get(package, []), where
