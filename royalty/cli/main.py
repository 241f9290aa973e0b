"""`royalty`: the command line. Thin: it parses arguments and calls package APIs."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from royalty.cli.deadletters import deadletters_app
from royalty.cli.factory import adapters_app, factory_app
from royalty.cli.influence import influence_app
from royalty.cli.metering import credits_app, ledger_app, payouts_app, prices_app, report
from royalty.cli.options import DataDir, DbUrl, err
from royalty.cli.options import settings_for as _settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Royalty: pay the people behind a model."
)
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
models_app = typer.Typer(no_args_is_help=True, help="Models: build and list.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
datanet_app = typer.Typer(no_args_is_help=True, help="Datanets: create, import, publish.")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(datanet_app, name="datanet")
app.add_typer(factory_app, name="factory")
app.add_typer(adapters_app, name="adapters")
app.add_typer(credits_app, name="credits")
app.add_typer(prices_app, name="prices")
app.add_typer(payouts_app, name="payouts")
app.add_typer(ledger_app, name="ledger")
app.add_typer(influence_app, name="influence")
app.add_typer(deadletters_app, name="deadletters")
app.command("report")(report)


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)],
    )


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    engine_url: Annotated[
        list[str] | None,
        typer.Option("--engine-url", help="External vLLM server (repeatable); none = start one."),
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Model tree with manifest.json; default: the demo models.")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
    demo_key: Annotated[
        bool,
        typer.Option(
            help="Mint a demo API key once ready (only for the demo models on their own "
            "engine; ROYALTY_DEMO_KEY=0 also turns it off)."
        ),
    ] = True,
) -> None:
    """Run the gateway, its engines and the usage shipper until SIGTERM; flush usage; exit 0."""
    from royalty.server import serve

    _logging()
    settings = _settings(
        data_dir, database_url, host=host, port=port,
        engine_urls=tuple(engine_url) if engine_url else None, models_dir=models_dir,
    )  # fmt: skip
    _run_fast(serve(settings, demo_key=demo_key))


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
            create_key(_settings(data_dir, database_url), account, scope or ["inference"], rpm, tpm)
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

    if not asyncio.run(revoke_key(_settings(data_dir, database_url), key_id)):
        err.print(f"no active key with id {key_id}")
        raise typer.Exit(1)


@models_app.command("build")
def models_build(data_dir: DataDir = None) -> None:
    """Build the demo base model and adapters (cached by content hash)."""
    from factory import build_demo_models

    s = _settings(data_dir, None)
    models = build_demo_models(s.data_dir / "models", progress=True)
    sys.stdout.write(str(models.root) + "\n")


@db_app.command("migrate")
def db_migrate(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Bring the schema up to date."""
    from royalty.admin import migrate_only

    asyncio.run(migrate_only(_settings(data_dir, database_url)))


@datanet_app.command("create")
def datanet_create(
    name: Annotated[str, typer.Option(help="Datanet name (a-z, 0-9, '.', '_', '-').")],
    owner: Annotated[str, typer.Option(help="Owner account name (created if new).")],
    licence: Annotated[str, typer.Option(help="Licence of the records (SPDX id).")] = "CC-BY-4.0",
    mode: Annotated[
        str, typer.Option(help="open: accepted at once; curated: wait for a curator.")
    ] = "open",
    description: Annotated[str, typer.Option(help="What the datanet holds.")] = "",
    curator: Annotated[
        list[str] | None,
        typer.Option("--curator", help="Curator account besides the owner (repeatable)."),
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Create a datanet; prints its id on stdout."""
    from attribution.errors import DatanetError
    from royalty.admin import create_datanet

    if mode not in ("open", "curated"):
        err.print("[red]error:[/red] --mode is 'open' or 'curated'")
        raise typer.Exit(2)
    try:
        d = asyncio.run(
            create_datanet(
                _settings(data_dir, database_url), name, owner, licence,
                "curated" if mode == "curated" else "open", description, curator or [],
            )
        )  # fmt: skip
    except (DatanetError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    sys.stdout.write(f"{d.id}\n")


@datanet_app.command("list")
def datanet_list(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """List datanets."""
    from rich.table import Table

    from royalty.admin import list_datanets

    rows = asyncio.run(list_datanets(_settings(data_dir, database_url)))
    table = Table("id", "name", "owner", "licence", "mode", "description")
    for r in rows:
        d = r.datanet
        table.add_row(
            str(d.id), d.name, r.owner, d.licence, d.acceptance_mode, d.description
        )  # fmt: skip
    Console(width=200).print(table)


@datanet_app.command("import")
def datanet_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSONL file: one record a line.", exists=True, dir_okay=False, readable=True
        ),
    ],
    datanet: Annotated[str, typer.Option(help="Datanet name.")],
    contributor: Annotated[str, typer.Option(help="Contributor account (created if new).")],
    atomic: Annotated[
        bool, typer.Option(help="All or nothing: write nothing if any record is rejected.")
    ] = False,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Import JSONL records as one contributor; prints a summary. Exit 1 when an --atomic
    import had a rejected record (nothing written)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from attribution.errors import BulkRejected, DatanetError
    from royalty.admin import import_records

    lines = [
        (n, line.rstrip(b"\r"))
        for n, line in enumerate(file.read_bytes().split(b"\n"), start=1)
        if line.strip()
    ]
    settings = _settings(data_dir, database_url)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"importing into {datanet}", total=len(lines))
        try:
            results = asyncio.run(
                import_records(
                    settings, lines, datanet, contributor, atomic=atomic,
                    progress=lambda n: bar.advance(task, n),
                )
            )  # fmt: skip
        except BulkRejected as e:
            results = e.results
        except (DatanetError, ValueError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None
    written = not (atomic and any(r.status == "rejected" for r in results))
    _import_summary(results, [n for n, _ in lines], written)
    if not written:
        raise typer.Exit(1)


def _import_summary(results: list[Any], line_numbers: list[int], written: bool) -> None:
    counts = {"accepted": 0, "pending": 0, "flagged": 0, "rejected": 0}
    reasons: dict[str, int] = {}
    for r in results:
        counts[r.status] += 1
        if r.status == "rejected":
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    out = sys.stdout
    out.write(" ".join(f"{k}={v}" for k, v in counts.items()) + "\n")
    for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        out.write(f"  rejected {reason}: {n}\n")
    shown = 0
    for r in results:
        if r.status in ("rejected", "flagged") and shown < 20:
            shown += 1
            out.write(f"  line {line_numbers[r.index]}: {r.status} {r.reason}: {r.detail}\n")
    noted = counts["rejected"] + counts["flagged"]
    if noted > shown:
        out.write(f"  ... and {noted - shown} more\n")
    if not written:
        out.write("atomic import: nothing was written\n")


@datanet_app.command("pending")
def datanet_pending(
    name: Annotated[str, typer.Argument(help="Datanet name.")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Records awaiting a curator (pending and flagged), oldest first; one JSON object a line."""
    import msgspec

    from attribution.errors import DatanetError
    from royalty.admin import pending_records

    try:
        records = asyncio.run(pending_records(_settings(data_dir, database_url), name))
    except DatanetError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    for r in records:
        sys.stdout.write(msgspec.json.encode(r).decode() + "\n")


@datanet_app.command("decide")
def datanet_decide(
    record_id: Annotated[int, typer.Argument(help="Record id.")],
    curator: Annotated[str, typer.Option(help="Deciding curator's account name.")],
    reason: Annotated[str, typer.Option(help="Why (recorded with the decision).")],
    approve: Annotated[
        bool | None, typer.Option("--approve/--reject", help="Accept or reject the record.")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Approve or reject a pending or flagged record; prints the decision as JSON."""
    import msgspec

    from attribution.errors import DatanetError
    from royalty.admin import decide_record

    if approve is None:
        err.print("[red]error:[/red] say --approve or --reject")
        raise typer.Exit(2)
    try:
        decision = asyncio.run(
            decide_record(_settings(data_dir, database_url), record_id, curator, approve, reason)
        )
    except (DatanetError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    sys.stdout.write(msgspec.json.encode(decision).decode() + "\n")


@datanet_app.command("publish")
def datanet_publish(
    name: Annotated[str, typer.Argument(help="Datanet name.")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Freeze the datanet's accepted records into a snapshot; prints it as JSON."""
    import msgspec

    from attribution.errors import DatanetError
    from royalty.admin import publish_datanet

    try:
        snap = asyncio.run(publish_datanet(_settings(data_dir, database_url), name))
    except DatanetError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    sys.stdout.write(msgspec.json.encode(snap).decode() + "\n")


@datanet_app.command("rehash")
def datanet_rehash(
    name: Annotated[str | None, typer.Argument(help="Datanet name (default: every one).")] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Recompute stored content hashes and near-duplicate signatures under the current text
    normalisation (run once after an upgrade that changes it; idempotent). Copies it reveals
    are rejected or flagged; one JSON report per datanet."""
    import msgspec

    from attribution.errors import DatanetError
    from royalty.admin import rehash_datanets

    try:
        reports = asyncio.run(rehash_datanets(_settings(data_dir, database_url), name))
    except DatanetError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    for one in reports:
        sys.stdout.write(msgspec.json.encode(one).decode() + "\n")


def _run_fast(coro: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop where it is installed (uvicorn's `loop=` setting only applies
    when uvicorn creates the loop itself)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main() -> None:
    app()
