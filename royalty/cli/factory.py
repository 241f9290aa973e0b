"""`royalty factory ...` and `royalty adapters ...`: train adapters on datanet snapshots and
read their lineage. Thin: the work is in `royalty.factory_jobs` and `attribution.lineage`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from royalty.cli.options import DataDir, DbUrl, err
from royalty.cli.options import migrated_engine as _db
from royalty.cli.options import settings_for as _settings
from royalty.settings import Settings

if TYPE_CHECKING:
    from attribution.lineage import RegisteredAdapter
    from factory.adapters import AdapterRecipe

factory_app = typer.Typer(no_args_is_help=True, help="Model factory: train adapters on snapshots.")
adapters_app = typer.Typer(no_args_is_help=True, help="Adapters: registry and lineage.")


@factory_app.command("train")
def factory_train(
    datanet: Annotated[str, typer.Option(help="Datanet whose snapshot to train on.")],
    name: Annotated[str, typer.Option(help="Adapter name (the `model` clients request).")],
    owner: Annotated[str, typer.Option(help="Owning account (created if new).")],
    snapshot: Annotated[
        str | None, typer.Option(help="Snapshot id; default: the datanet's latest.")
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="Retire an active adapter of the same name.")
    ] = False,
    steps: Annotated[int | None, typer.Option(help="Training steps (default 120).")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed (default 1235).")] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Base model tree; default: the demo base model.")
    ] = None,
    adapters_dir: Annotated[
        Path | None, typer.Option(help="Where adapters are written (default DATA_DIR/adapters).")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Train a LoRA adapter on a snapshot, write its lineage and register it; a running
    gateway serves it within a second or two. Prints the lineage summary as JSON."""
    import dataclasses

    from attribution.errors import DatanetError
    from factory.adapters import AdapterRecipe

    s = _settings(
        data_dir, database_url, models_dir=models_dir, adapters_dir=adapters_dir
    )  # fmt: skip
    recipe = AdapterRecipe()
    if steps is not None:
        if steps < 1:
            err.print("[red]error:[/red] --steps must be positive")
            raise typer.Exit(2)
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=steps))
    if seed is not None:
        recipe = dataclasses.replace(recipe, seed=seed)
    try:
        out = asyncio.run(_train(s, datanet, snapshot, name, owner, recipe, replace))
    except (DatanetError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    sys.stdout.write(out + "\n")


async def _train(
    s: Settings,
    datanet: str,
    snapshot: str | None,
    name: str,
    owner: str,
    recipe: AdapterRecipe,
    replace: bool,
) -> str:
    from attribution.lineage import LineageService
    from attribution.service import DatanetService
    from factory.build import load_manifest
    from royalty.admin import account_id
    from royalty.factory_jobs import train_on_snapshot
    from royalty.runtime import demo_models_dir

    base = load_manifest(demo_models_dir(s), verify=False)
    async with _db(s) as engine:
        owner_id = await account_id(engine, owner)
        trained = await train_on_snapshot(
            DatanetService(engine),
            LineageService(engine),
            base,
            s.resolved_adapters_dir,
            datanet=datanet,
            name=name,
            owner_account_id=owner_id,
            snapshot_id=snapshot,
            recipe=recipe,
            replace=replace,
            progress=True,
        )
    a, lin = trained.adapter, trained.build.lineage
    summary = {
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
    return msgspec.json.encode(summary).decode()


@adapters_app.command("list")
def adapters_list(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """List the active adapters with their datanet, snapshot and owner."""
    from attribution.lineage import LineageService

    async def run() -> list[RegisteredAdapter]:
        async with _db(_settings(data_dir, database_url)) as engine:
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
        async with _db(_settings(data_dir, database_url)) as engine:
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
        async with _db(_settings(data_dir, database_url)) as engine:
            await LineageService(engine).retire(name)

    try:
        asyncio.run(run())
    except DatanetError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
