"""`royalty adapters list|lineage|retire`: the adapter registry and lineage
(`attribution.lineage`)."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from royalty.cli.options import DataDir, DbUrl, err, migrated_engine, settings_for

if TYPE_CHECKING:
    from attribution.lineage import RegisteredAdapter

adapters_app = typer.Typer(no_args_is_help=True, help="Adapters: registry and lineage.")


@adapters_app.command("list")
def adapters_list(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """List the active adapters with their datanet, snapshot and owner."""
    from attribution.lineage import LineageService

    async def run() -> list[RegisteredAdapter]:
        async with migrated_engine(settings_for(data_dir, database_url)) as engine:
            return list(await LineageService(engine).active())

    table = Table("name", "base", "datanet", "snapshot", "records", "owner", "created")
    for a in asyncio.run(run()):
        table.add_row(
            a.name, a.base_model, a.datanet, a.snapshot_id[:16], str(a.record_count),
            a.owner, a.created_at,
        )  # fmt: skip
    Console(width=200).print(table)


@adapters_app.command("lineage")
def adapters_lineage(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    records: Annotated[
        bool, typer.Option(help="Also print the record ids in training order.")
    ] = False,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Print an adapter's lineage as JSON: base, datanet, snapshot, contributors."""
    from attribution.errors import DatanetError
    from attribution.lineage import LineageService

    async def run() -> bytes:
        async with migrated_engine(settings_for(data_dir, database_url)) as engine:
            svc = LineageService(engine)
            doc = msgspec.to_builtins(await svc.lineage(name))
            if records:
                doc["training_order"] = await svc.training_order(name)
            return msgspec.json.format(msgspec.json.encode(doc), indent=2)

    try:
        sys.stdout.write(asyncio.run(run()).decode() + "\n")
    except DatanetError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None


@adapters_app.command("retire")
def adapters_retire(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Stop serving an adapter (gateways drop it within seconds; its lineage stays)."""
    from attribution.errors import DatanetError
    from attribution.lineage import LineageService

    async def run() -> None:
        async with migrated_engine(settings_for(data_dir, database_url)) as engine:
            await LineageService(engine).retire(name)

    try:
        asyncio.run(run())
    except DatanetError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
