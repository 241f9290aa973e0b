"""`royalty factory train`: train an adapter on a datanet snapshot in the foreground
(`royalty.admin.train_adapter` over `royalty.training`); `POST /v1/adapters` queues the
same work for the training worker instead."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from royalty.cli.options import DataDir, DbUrl, err, settings_for

factory_app = typer.Typer(no_args_is_help=True, help="Model factory: train adapters on snapshots.")


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
    from royalty.admin import train_adapter

    s = settings_for(
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
        summary = asyncio.run(train_adapter(s, datanet, snapshot, name, owner, recipe, replace))
    except (DatanetError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
