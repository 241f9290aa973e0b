"""`royalty deadletters list|show|replay|discard`: what no store would take, for operators.

Thin: parses arguments, opens the database, reads the store (`core.deadletters`); a replay or
a discard goes through `royalty.admin`, which hands the item to the package that owns its
queue. Lists print one JSON object a line; `show` prints one JSON object with the decoded
payload.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from royalty.cli.options import (
    DataDir,
    DbUrl,
    err,
    run_with_engine,
    run_with_settings,
    settings_for,
)

if TYPE_CHECKING:
    from core.deadletters import DeadLetter

deadletters_app = typer.Typer(
    no_args_is_help=True,
    help="Dead letters: usage records, influence jobs and usage events no store would take.",
)

LetterId = Annotated[int, typer.Argument(help="Dead letter id (see `royalty deadletters list`).")]


def _out(obj: Any) -> None:
    text = json.dumps(obj, ensure_ascii=False, default=str)
    # Payload text may hold lone surrogates: escape them rather than fail on the way out.
    sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.markup import escape

    # Database errors quote data, brackets included: never markup.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _summary(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "queue": letter.queue,
        "item_key": letter.item_key,
        "state": letter.state,
        "sqlstate": letter.sqlstate,
        "error": letter.error if len(letter.error) <= 200 else letter.error[:200] + "...",
        "failures": letter.failures,
        "created_at": letter.created_at.isoformat(),
        "resolved_at": letter.resolved_at.isoformat() if letter.resolved_at else None,
        "resolution": letter.resolution,
    }


def _decoded(payload: bytes) -> Any:
    """The payload as JSON-able data: msgpack decoded without a schema (any queue, any
    version), or base64 when it does not decode."""
    import msgspec

    if not payload:
        return None
    try:
        return msgspec.msgpack.decode(payload)
    except msgspec.DecodeError:
        return {"base64": base64.b64encode(payload).decode()}


@deadletters_app.command("list")
def deadletters_list(
    queue: Annotated[
        str | None, typer.Option(help="usage, influence or posting (default: all).")
    ] = None,
    state: Annotated[
        str | None, typer.Option(help="dead, replayed or discarded (default: all).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 1000,
    after: Annotated[int, typer.Option(help="Only ids above this (paging).")] = 0,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Dead letters in id order, one JSON object a line (error cut at 200 characters)."""
    from core.deadletters import QUEUES, STATES, PostgresDeadLetterStore

    if queue is not None and queue not in QUEUES:
        raise _fail(f"--queue is one of {', '.join(QUEUES)}", 2)
    if state is not None and state not in STATES:
        raise _fail(f"--state is one of {', '.join(STATES)}", 2)

    async def go(engine: Any) -> list[DeadLetter]:
        store = PostgresDeadLetterStore(engine)
        return list(await store.list(queue=queue, state=state, limit=limit, after_id=after))

    for letter in run_with_engine(data_dir, database_url, go):
        _out(_summary(letter))


@deadletters_app.command("show")
def deadletters_show(
    letter_id: LetterId, data_dir: DataDir = None, database_url: DbUrl = None
) -> None:
    """One dead letter as JSON: its whole error and its decoded payload (the item)."""
    from core.deadletters import PostgresDeadLetterStore

    async def go(engine: Any) -> DeadLetter | None:
        return await PostgresDeadLetterStore(engine).get(letter_id)

    letter = run_with_engine(data_dir, database_url, go)
    if letter is None:
        raise _fail(f"no dead letter {letter_id}")
    _out({**_summary(letter), "error": letter.error, "payload": _decoded(letter.payload)})


@deadletters_app.command("replay")
def deadletters_replay(
    letter_id: LetterId,
    note: Annotated[str, typer.Option(help="Why it may go through now (kept with it).")] = "",
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Put a dead item back on its way and mark it replayed: a usage record is stored (its
    text made storable; a model name that still cannot be stored becomes "<invalid>") and then
    posted; an influence job is queued again (text made storable); a posting event goes back
    on the posting queue. Exit 1 if it is not a dead letter or is still refused."""
    from core.sqlstate import DataRejected
    from royalty.admin import replay_dead_letter

    settings = settings_for(data_dir, database_url)
    try:
        done = run_with_settings(
            settings, lambda e: replay_dead_letter(e, settings, letter_id, note)
        )
    except (LookupError, ValueError, DataRejected) as e:
        raise _fail(str(e)) from None
    sys.stdout.write(f"replayed {letter_id}: {done}\n")


@deadletters_app.command("discard")
def deadletters_discard(
    letter_id: LetterId,
    reason: Annotated[str, typer.Option(help="Why it is given up (kept with it).")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Give a dead item up for good, with the reason: a discarded posting event is never
    charged (its budget reservation is released); a discarded influence job's text is
    deleted. Exit 1 if it is not a dead letter."""
    from royalty.admin import discard_dead_letter

    if not reason.strip():
        raise _fail("--reason must say why", 2)

    try:
        done = run_with_engine(
            data_dir, database_url, lambda e: discard_dead_letter(e, letter_id, reason)
        )
    except LookupError as e:
        raise _fail(str(e)) from None
    if not done:
        raise _fail(f"no dead letter {letter_id} (already resolved, or no such id)")
    sys.stdout.write(f"discarded {letter_id}\n")
