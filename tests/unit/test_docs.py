"""The README's command table and the CLI agree: every documented command exists, and every
command is documented."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from royalty.cli.main import app

README = Path(__file__).parents[2] / "README.md"


def _documented() -> set[tuple[str, ...]]:
    found = set()
    for line in README.read_text().splitlines():
        m = re.match(r"\| `royalty ([a-z][a-z ]*?)(?: [A-Z\[-]|`)", line)
        if m:
            found.add(tuple(m.group(1).split()))
    return found


def _commands(t: typer.Typer, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out = {
        prefix + (c.name or c.callback.__name__.replace("_", "-"),) for c in t.registered_commands
    }  # type: ignore[union-attr]
    for g in t.registered_groups:
        out |= _commands(g.typer_instance, prefix + (g.name,))  # type: ignore[arg-type,operator]
    return out


def test_readme_documents_every_command_and_only_real_ones() -> None:
    documented, real = _documented(), _commands(app)
    assert documented, "no command table found in README.md"
    assert documented == real, {"undocumented": real - documented, "unknown": documented - real}


def test_every_documented_command_answers_help() -> None:
    runner = CliRunner()
    for words in sorted(_documented()):
        result = runner.invoke(app, [*words, "--help"])
        assert result.exit_code == 0, (words, result.output)
