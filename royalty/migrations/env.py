"""Alembic environment: runs the project's migrations against the URL it is handed.

The URL comes from `config.attributes["url"]` (set by `royalty.db.migrate`) or from
`sqlalchemy.url`; nothing here reads settings at import time.

Histories (`royalty.db.alembic_config` lists their directories as `version_locations`; they
share one `alembic_version` table, one row per branch head):

- the shared base, `royalty/migrations/versions`: 0001-0014, the single linear history of
  earlier releases, which created every table of every package. Frozen: no new revisions.
- one per package that owns tables, `<package>/migrations/versions` for core, gateway,
  attribution and metering (`royalty.db.OWN_HISTORIES`): a branch labelled with the
  package's name, starting with an empty branch point whose `down_revision` is 0014. A
  package's schema change is a revision on its own branch, touching only its own tables
  (tests/integration/test_migrations.py holds the table-to-owner map and checks it); a change
  that needs another package's revision first names it in `depends_on`.

`royalty db migrate` (`royalty.db.migrate`) upgrades to `heads`. A database an older release
left at 0014 (or earlier) upgrades in place: Alembic runs what is missing of the base, then
each branch. A new revision, say for metering, from a Python shell:
`command.revision(royalty.db.alembic_config(url), "what changes", head="metering@head",
rev_id="metering_0002")` writes `metering/migrations/versions/metering_0002_what_changes.py`
(the head's directory); name ids `<package>_<NNNN>`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the migrations")
    return str(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), literal_binds=True, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
