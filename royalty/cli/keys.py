"""`royalty keys create|revoke`: API keys (`royalty.admin`)."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from royalty.cli.options import DataDir, DbUrl, err, settings_for

keys_app = typer.Typer(no_args_is_help=True, help="API keys.")


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="Account the key spends for (created if new).")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="inference, contributor, curator, admin (repeatable)."),
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(help="Requests per minute (default: server's).")
    ] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (default: server's).")] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Create an API key; prints only the key on stdout (it is stored hashed, shown once)."""
    from royalty.admin import create_key

    try:
        key = asyncio.run(
            create_key(
                settings_for(data_dir, database_url), account, scope or ["inference"], rpm, tpm
            )
        )
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    sys.stdout.write(key + "\n")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="Key id.")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Revoke a key (takes effect within the gateway's key cache TTL)."""
    from royalty.admin import revoke_key

    if not asyncio.run(revoke_key(settings_for(data_dir, database_url), key_id)):
        err.print(f"no active key with id {key_id}")
        raise typer.Exit(1)
