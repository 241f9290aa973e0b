"""`royalty db migrate`: the database schema (`royalty.db`)."""

from __future__ import annotations

import asyncio

import typer

from royalty.cli.options import DataDir, DbUrl, settings_for

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


@db_app.command("migrate")
def db_migrate(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Bring the schema up to date."""
    from royalty.admin import migrate_only

    asyncio.run(migrate_only(settings_for(data_dir, database_url)))
