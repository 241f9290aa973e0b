"""`royalty models build`: the demo models (`factory`)."""

from __future__ import annotations

import sys

import typer

from royalty.cli.options import DataDir, settings_for

models_app = typer.Typer(no_args_is_help=True, help="Models: build and list.")


@models_app.command("build")
def models_build(data_dir: DataDir = None) -> None:
    """Build the demo base model and adapters (cached by content hash)."""
    from factory import build_demo_models

    s = settings_for(data_dir, None)
    models = build_demo_models(s.data_dir / "models", progress=True)
    sys.stdout.write(str(models.root) + "\n")
