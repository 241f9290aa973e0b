"""`royalty datanet create|list|import|pending|decide|publish|rehash`: datanets from the
command line (`royalty.admin` over `attribution`). Results on stdout: ids, JSON, a summary."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from royalty.cli.options import DataDir, DbUrl, err, progress_bar, settings_for

datanet_app = typer.Typer(no_args_is_help=True, help="Datanets: create, import, publish.")


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
                settings_for(data_dir, database_url), name, owner, licence,
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

    rows = asyncio.run(list_datanets(settings_for(data_dir, database_url)))
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
    from attribution.errors import BulkRejected, DatanetError
    from royalty.admin import import_records

    lines = [
        (n, line.rstrip(b"\r"))
        for n, line in enumerate(file.read_bytes().split(b"\n"), start=1)
        if line.strip()
    ]
    settings = settings_for(data_dir, database_url)
    with progress_bar(f"importing into {datanet}", len(lines)) as advance:
        try:
            results = asyncio.run(
                import_records(
                    settings, lines, datanet, contributor, atomic=atomic, progress=advance
                )
            )
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
        records = asyncio.run(pending_records(settings_for(data_dir, database_url), name))
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
            decide_record(settings_for(data_dir, database_url), record_id, curator, approve, reason)
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
        snap = asyncio.run(publish_datanet(settings_for(data_dir, database_url), name))
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
        reports = asyncio.run(rehash_datanets(settings_for(data_dir, database_url), name))
    except DatanetError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    for one in reports:
        sys.stdout.write(msgspec.json.encode(one).decode() + "\n")
