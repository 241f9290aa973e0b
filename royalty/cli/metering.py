"""`royalty credits|prices|payouts|ledger|report`: metering from the command line.

Thin: parses arguments, opens the database, calls `metering` APIs. Registered in
`royalty/cli/main.py`. Amounts are typed as decimal credits and parsed exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from royalty.cli.options import DataDir, DbUrl, err, migrated_engine, settings_for
from royalty.factory_jobs import LineageAdapterDirectory

credits_app = typer.Typer(no_args_is_help=True, help="Consumer credit: top up, show.")
prices_app = typer.Typer(no_args_is_help=True, help="Versioned prices per base model and adapter.")
payouts_app = typer.Typer(no_args_is_help=True, help="Monthly close, proofs, penalties.")
ledger_app = typer.Typer(no_args_is_help=True, help="The ledger: post usage, check invariants.")

T = TypeVar("T")

Month = Annotated[str, typer.Option("--month", help="Month as YYYY-MM (UTC).")]


@asynccontextmanager
async def _engine(data_dir: Path | None, database_url: str | None) -> AsyncIterator[AsyncEngine]:
    async with migrated_engine(settings_for(data_dir, database_url)) as engine:
        yield engine


def _run(
    data_dir: Path | None, database_url: str | None, fn: Callable[[AsyncEngine], Awaitable[T]]
) -> T:
    async def go() -> T:
        async with _engine(data_dir, database_url) as engine:
            return await fn(engine)

    return asyncio.run(go())


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _month(text: str) -> dt.date:
    from metering.money import parse_month

    try:
        return parse_month(text)
    except ValueError as e:
        raise _fail(str(e), 2) from None


async def _drain(engine: AsyncEngine) -> int:
    """Post every queued usage event, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from metering.ledger.posting import PostingWorker
    from metering.ledger.sources import UsageEventAttribution

    worker = PostingWorker(engine, LineageAdapterDirectory(engine), UsageEventAttribution(engine))
    depth = await worker.queue_depth()
    if depth == 0:
        return 0
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("posting usage", total=depth)
        return await worker.drain(lambda n: bar.advance(task, n))


# --- credits --------------------------------------------------------------------------------
@credits_app.command("add")
def credits_add(
    account: Annotated[str, typer.Option(help="Consumer account name (created if new).")],
    amount: Annotated[str, typer.Option(help="Credits, a decimal string (exact, <= 6 places).")],
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Credit at most once per key: a rerun with the same key and arguments changes "
            "nothing (prints the first run's result); with other arguments it fails (exit 1)."
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Top up an account's credit (the account is created if new); prints the available
    credit."""
    from gateway.routes.metering import MAX_IDEMPOTENCY_KEY, topup_fingerprint
    from metering.ledger.book import IdempotencyConflict, PostgresLedger
    from metering.money import MoneyError, format_micros, parse_credits
    from royalty.admin import account_id

    try:
        micros = parse_credits(amount)
    except MoneyError as e:
        raise _fail(str(e), 2) from None
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
        and all(" " <= c <= "~" for c in idempotency_key)
    ):
        raise _fail(f"--idempotency-key: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters", 2)
    memo = f"credits add {format_micros(micros)}"

    async def go(engine: AsyncEngine) -> int:
        ledger = PostgresLedger(engine)
        who = await account_id(engine, account)
        if idempotency_key is None:
            await ledger.top_up(who, micros, memo)
            return (await ledger.balance("consumer", who)).available
        fingerprint = topup_fingerprint(account, micros, True)
        return (await ledger.top_up_once(idempotency_key, fingerprint, who, micros, memo)).available

    try:
        available = _run(data_dir, database_url, go)
    except IdempotencyConflict as e:
        raise _fail(str(e), 1) from None
    except ValueError as e:
        raise _fail(str(e), 2) from None
    sys.stdout.write(f"{account} {format_micros(available)}\n")


@credits_app.command("show")
def credits_show(
    account: Annotated[str, typer.Option(help="Account name.")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Print an account's balance, held (reserved) and available credit."""
    from metering.ledger.book import PostgresLedger
    from metering.money import format_micros
    from royalty.admin import existing_account_id

    async def go(engine: AsyncEngine) -> Any:
        return await PostgresLedger(engine).balance(
            "consumer", await existing_account_id(engine, account)
        )

    try:
        b = _run(data_dir, database_url, go)
    except ValueError as e:
        raise _fail(str(e)) from None
    sys.stdout.write(
        f"balance={format_micros(b.balance)} held={format_micros(b.held)} "
        f"available={format_micros(b.available)}\n"
    )


# --- prices ---------------------------------------------------------------------------------
@prices_app.command("set")
def prices_set(
    base_model: Annotated[str, typer.Option(help="Base model name.")],
    input_credits: Annotated[
        str, typer.Option("--input", help="Credits per million input tokens.")
    ],
    output_credits: Annotated[
        str, typer.Option("--output", help="Credits per million output tokens.")
    ],
    adapter: Annotated[str, typer.Option(help="Adapter name; empty = the base model itself.")] = "",
    effective_from: Annotated[
        str | None, typer.Option(help="ISO 8601 time with zone (default: now).")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Add a price version; prints its id (the version stored with every charge)."""
    from metering.catalog import CatalogError, PostgresCatalog
    from metering.money import MoneyError, parse_credits

    try:
        pin = parse_credits(input_credits, allow_zero=True)
        pout = parse_credits(output_credits, allow_zero=True)
        when = dt.datetime.fromisoformat(effective_from) if effective_from else None
    except (MoneyError, ValueError) as e:
        raise _fail(str(e), 2) from None
    if when is not None and when.tzinfo is None:
        raise _fail("--effective-from needs a time zone, e.g. 2026-12-01T00:00:00+00:00", 2)
    try:
        price = _run(
            data_dir, database_url,
            lambda e: PostgresCatalog(e).set_price(base_model, adapter, pin, pout, when),
        )  # fmt: skip
    except CatalogError as e:
        raise _fail(str(e), 2) from None
    sys.stdout.write(f"{price.id}\n")


@prices_app.command("list")
def prices_list(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """List every price version (credits per million tokens)."""
    from rich.table import Table

    from metering.catalog import PostgresCatalog
    from metering.money import format_micros

    prices = _run(data_dir, database_url, lambda e: PostgresCatalog(e).prices())
    table = Table("version", "base model", "adapter", "input / M", "output / M", "effective from")
    for p in prices:
        table.add_row(
            str(p.id), p.base_model, p.adapter or "-", format_micros(p.input_micros_per_m),
            format_micros(p.output_micros_per_m), p.effective_from.isoformat(),
        )  # fmt: skip
    Console(width=200).print(table)


# --- payouts --------------------------------------------------------------------------------
@payouts_app.command("close")
def payouts_close(
    month: Month,
    skip_influence: Annotated[
        bool,
        typer.Option(
            "--skip-influence",
            help="Expire the month's unfinished influence jobs instead of running them.",
        ),
    ] = False,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Post queued usage, finish the month's influence jobs, then freeze the month:
    statements, Merkle root, proofs. A closed month is left as it is (exit 0)."""
    from metering.payouts.close import CloseError, PostgresPayouts
    from royalty.cli.influence import settle_month

    when = _month(month)

    async def go(engine: AsyncEngine) -> Any:
        if await PostgresPayouts(engine).month(when) is None:
            await _drain(engine)
            # Influence adjusts posted events of open months only: it runs before the close.
            settings = settings_for(data_dir, database_url)
            err.print(await settle_month(engine, settings, when, skip=skip_influence))
        return await PostgresPayouts(engine).close(when)

    try:
        c = _run(data_dir, database_url, go)
    except CloseError as e:
        raise _fail(str(e)) from None
    from metering.money import format_micros

    state = "already closed" if c.already_closed else "closed"
    sys.stdout.write(
        f"{month} {state}: root={c.root.hex()} statements={c.statements} events={c.events} "
        f"charges={format_micros(c.charges)} payouts={format_micros(c.payouts)} "
        f"fees={format_micros(c.fees)} withheld={format_micros(c.withheld)}\n"
    )


@payouts_app.command("verify")
def payouts_verify(month: Month, data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Check every statement's Merkle proof against the month's root; exit 0 only if all do."""
    from metering.payouts.close import PostgresPayouts

    checked, bad = _run(data_dir, database_url, lambda e: PostgresPayouts(e).verify(_month(month)))
    if bad:
        for b in bad[:20]:
            err.print(f"[red]does not verify:[/red] {b}")
        raise typer.Exit(1)
    sys.stdout.write(f"{month}: {checked} statements verify\n")


@payouts_app.command("penalize")
def payouts_penalize(
    reason: Annotated[str, typer.Option(help="Why (shown to the contributor).")],
    contributor: Annotated[
        str | None, typer.Option(help="Penalise a contributor (account name).")
    ] = None,
    record: Annotated[
        int | None, typer.Option(help="Penalise one training record (its id) instead.")
    ] = None,
    adapter: Annotated[
        str, typer.Option(help="With --contributor: only this adapter's credits (default: all).")
    ] = "",
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Withhold a contributor's (or one record's) future credits and reverse the open months'
    credits into withheld, with the reason the contributor reads."""
    from metering.ledger.book import LedgerError, PostgresLedger
    from metering.money import format_micros
    from royalty.admin import existing_account_id

    if (contributor is None) == (record is None):
        raise _fail("name either --contributor or --record", 2)
    if record is not None and adapter:
        raise _fail("--adapter applies to --contributor only", 2)

    async def go(engine: AsyncEngine) -> tuple[int, int]:
        if record is not None:
            from attribution.access import readable_record
            from attribution.errors import NotFound
            from metering.payouts.record_penalties import penalize_record

            async with engine.connect() as conn:
                try:
                    found = await readable_record(conn, record, None)
                except NotFound as e:
                    raise ValueError(str(e)) from None
            return await penalize_record(engine, record, found.contributor_account_id, reason)
        assert contributor is not None
        who = await existing_account_id(engine, contributor)
        return await PostgresLedger(engine).penalize(who, adapter, reason)

    try:
        penalty, reversed_ = _run(data_dir, database_url, go)
    except (LedgerError, ValueError) as e:
        raise _fail(str(e)) from None
    kind = "record penalty" if record is not None else "penalty"
    sys.stdout.write(f"{kind} {penalty}: reversed {format_micros(reversed_)} credits\n")


# --- ledger ---------------------------------------------------------------------------------
@ledger_app.command("post")
def ledger_post(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Price, split and post every queued usage event now; prints how many."""
    sys.stdout.write(f"{_run(data_dir, database_url, _drain)}\n")


@ledger_app.command("worker")
def ledger_worker(
    idle: Annotated[float, typer.Option(help="Seconds to wait when the queue is empty.")] = 1.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics (/metrics) on this port (default: none)."),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "0.0.0.0",
    check_every: Annotated[
        float, typer.Option(help="Seconds between ledger invariant checks (default 0: never).")
    ] = 0.0,
    sweep_every: Annotated[
        float,
        typer.Option(help="Seconds between sweeps of expired credit holds (0: never)."),
    ] = 60.0,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Post queued usage events continuously until SIGTERM (royalty up runs one in a child
    process; run more anywhere: they share the queue with SKIP LOCKED); release expired
    credit holds every --sweep-every seconds; check the ledger's invariants every
    --check-every seconds (metrics and log)."""
    import logging
    import signal

    from core.deadletters import DeadLetterSampler, PostgresDeadLetterStore
    from metering.budgets.expiry import HoldSweeper
    from metering.ledger.audit import check
    from metering.ledger.posting import PostingWorker
    from metering.ledger.sources import UsageEventAttribution

    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, metrics_host)
    log = logging.getLogger("royalty.ledger")

    async def checks(engine: AsyncEngine) -> None:
        while True:
            try:
                for broken in await check(engine):
                    log.error("ledger invariant violated: %s", broken)
            except Exception:  # a failed check is retried; the posting goes on
                log.exception("ledger check failed")
            await asyncio.sleep(check_every)

    async def run(engine: AsyncEngine) -> None:
        worker = PostingWorker(
            engine, LineageAdapterDirectory(engine), UsageEventAttribution(engine)
        )
        tasks = [asyncio.ensure_future(worker.run(idle_s=idle))]
        if metrics_port is not None:  # the dead-letter gauge the RoyaltyDeadLetters alert reads
            sampler = DeadLetterSampler(PostgresDeadLetterStore(engine))
            tasks.append(asyncio.ensure_future(sampler.run()))
        if sweep_every > 0:
            tasks.append(asyncio.ensure_future(HoldSweeper(engine).run(sweep_every)))
        if check_every > 0:
            tasks.append(asyncio.ensure_future(checks(engine)))
        # SIGTERM cancels the tasks: a batch in flight rolls back and is posted next time.
        stop = asyncio.gather(*tasks)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await stop

    _run(data_dir, database_url, run)


@ledger_app.command("sweep")
def ledger_sweep(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Release every expired credit hold whose request recorded no usage now (the ledger
    worker does this every --sweep-every seconds); prints how many and how much."""
    from metering.budgets.expiry import HoldSweeper
    from metering.money import format_micros

    done = _run(data_dir, database_url, lambda e: HoldSweeper(e).sweep())
    sys.stdout.write(
        f"released {done.holds} expired holds ({format_micros(done.amount)} credits)\n"
    )


@ledger_app.command("check")
def ledger_check(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Check every ledger invariant; exit 1 and name the broken ones."""
    from metering.ledger.audit import check

    broken = _run(data_dir, database_url, check)
    for b in broken:
        err.print(f"[red]violated:[/red] {b}")
    if broken:
        raise typer.Exit(1)
    sys.stdout.write("ledger ok\n")


# --- report ---------------------------------------------------------------------------------
def report(
    month: Month,
    fmt: Annotated[str, typer.Option("--format", help="csv, html or pdf.")],
    output: Annotated[Path, typer.Option(help="File to write.")],
    account: Annotated[
        str | None, typer.Option(help="A contributor's own report (default: the operator's).")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Write a month's payout report (operator, or one contributor with --account)."""
    from metering.reports.data import operator_report, payee_report
    from metering.reports.pdf import render_pdf
    from metering.reports.render import render_text
    from royalty.admin import existing_account_id

    if fmt not in ("csv", "html", "pdf"):
        raise _fail("--format is csv, html or pdf", 2)
    when = _month(month)

    async def go(engine: AsyncEngine) -> Any:
        if account is None:
            return await operator_report(engine, when)
        return await payee_report(engine, when, await existing_account_id(engine, account))

    try:
        data = _run(data_dir, database_url, go)
    except (LookupError, ValueError) as e:
        raise _fail(str(e)) from None
    if fmt == "pdf":
        output.write_bytes(render_pdf(data))
    else:
        output.write_text(render_text(data, fmt), encoding="utf-8")
    sys.stdout.write(f"{output}\n")
