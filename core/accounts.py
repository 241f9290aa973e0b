"""Accounts: core owns the `accounts` table, the one table every package references.

An account is a unique, non-empty name with an id: an API consumer, a contributor, a curator,
an adapter owner. `api_keys` (gateway), datanets, records and adapters (attribution), ledger
accounts, penalties and top-ups (metering) all point at `accounts.id`, so the table lives on
the bottom floor, where every package may use it; none of them writes it except through the
SQL and helpers here. Invariants:

- One row per name (`UNIQUE`), never renamed or deleted here: an id, once handed out, names
  the same account for good (the ledger and the statements keep pointing at it).
- `account_id` is find-or-create and idempotent (concurrent callers with one name get one
  id); a blank name is refused before any SQL. `existing_account_id` never creates.
- `UPSERT_ACCOUNT` is the one statement that creates accounts; a caller that must create the
  account in its own transaction (`gateway.auth.PostgresKeyStore.create`: the account and its
  first key together) runs it on its own connection.

The table was created by migration 0001 of the shared base history
(`royalty/migrations/versions`); a later change to it is a revision in core's own history,
`core/migrations/versions` (branch label `core`).

There is no seam here to fake: the helpers are plain functions over an `AsyncEngine`, used
against a real database (in unit tests, `gateway.auth.InMemoryKeyStore` keeps its own names).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# --- named SQL (core owns `accounts`) ----------------------------------------------------------
UPSERT_ACCOUNT = text(
    """
    INSERT INTO accounts (name) VALUES (:name)
    ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
    RETURNING id
    """
)
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
