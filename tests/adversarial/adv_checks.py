"""What the adversarial suite checks after every fault, and the table it reports.

A client "received a response whole" when it read a complete non-streaming body with status
200, or a stream that ended with `data: [DONE]`. For every such response the money trail must
hold: exactly one `usage_events` row (status `ok`), posted once (`usage_postings`), and the
ledger's invariants (`royalty ledger check`, metering/ledger/audit.py) intact. Money is conserved
when, on top of that, every ledger entry sums to zero and each of the suite's consumer
accounts spent exactly the charges posted against it; after a fault that kills nothing, no
credit may stay held either.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from support.procs import ROYALTY

from metering.money import format_micros


@dataclass
class Outcome:
    """One request as its client saw it."""

    kind: str
    status: int | None
    """HTTP status; None when no status line came back (refused, reset, timed out)."""
    request_id: str | None
    whole: bool
    started: float
    ended: float
    account: str = ""
    error: str = ""
    error_shape_ok: bool | None = None
    """For a 4xx/5xx: whether the body is OpenAI's error shape (None: not checked)."""


@dataclass
class Tally:
    """Every outcome of one scenario."""

    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def whole(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.whole]

    def five_xx(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        """5xx answers to requests sent in [since, until]."""
        return [
            o
            for o in self.outcomes
            if o.status is not None and o.status >= 500 and since <= o.started <= until
        ]

    def no_status(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is None and since <= o.started <= until]


@dataclass
class Verdict:
    """The money trail of one scenario's whole responses."""

    completed: int
    with_one_row: int
    duplicates: int
    posted: int
    money_ok: bool
    failures: list[str]
    notes: list[str]


# --- database reads ---------------------------------------------------------------------------
async def _fetch(db: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db, timeout=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def usage_rows(db: str, ids: Iterable[str]) -> dict[str, list[asyncpg.Record]]:
    rows = await _fetch(
        db,
        "SELECT request_id, status, recorded_at FROM usage_events WHERE request_id = ANY($1)",
        sorted(set(ids)),
    )
    out: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        out.setdefault(r["request_id"], []).append(r)
    return out


async def postings(db: str, ids: Iterable[str]) -> dict[str, list[asyncpg.Record]]:
    rows = await _fetch(
        db,
        """SELECT p.event_id, p.charge, t.created_at FROM usage_postings p
           LEFT JOIN ledger_transactions t ON t.id = p.txn_id WHERE p.event_id = ANY($1)""",
        sorted(set(ids)),
    )
    out: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        out.setdefault(r["event_id"], []).append(r)
    return out


async def wait_rows(db: str, ids: list[str], timeout_s: float) -> dict[str, list[asyncpg.Record]]:
    """The rows of `ids`, once each has one or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await usage_rows(db, ids)
        if all(i in rows for i in ids) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.25)


async def wait_posted(db: str, ids: list[str], timeout_s: float) -> dict[str, list[asyncpg.Record]]:
    """The postings of `ids`, once each has one and nothing is left queued, or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        posts = await postings(db, ids)
        queued = (await _fetch(db, "SELECT count(*) AS n FROM usage_unposted"))[0]["n"]
        if (all(i in posts for i in ids) and queued == 0) or time.monotonic() > deadline:
            return posts
        await asyncio.sleep(0.5)


async def ledger_check(db: str) -> tuple[int, str]:
    """`royalty ledger check`: its exit status and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        ROYALTY, "ledger", "check", "--database-url", db,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), out.decode(errors="replace")


_SPENT = """
SELECT o.name AS account, la.id AS ledger_id, la.balance, la.held,
       coalesce((SELECT sum(e.amount) FROM ledger_entries e JOIN ledger_transactions t
                 ON t.id = e.txn_id WHERE e.account_id = la.id AND t.kind = 'topup'), 0)
           AS topped_up,
       coalesce((SELECT sum(p.charge) FROM usage_postings p WHERE p.payer_id = la.id), 0)
           AS charged
FROM accounts o JOIN ledger_accounts la ON la.owner_id = o.id AND la.kind = 'consumer'
WHERE o.name = ANY($1)
"""


async def money(db: str, accounts: list[str], *, holds_must_clear: bool) -> list[str]:
    """What breaks conservation for these consumer accounts (empty: conserved)."""
    broken = []
    total = (await _fetch(db, "SELECT coalesce(sum(amount), 0) AS s FROM ledger_entries"))[0]["s"]
    if total != 0:
        broken.append(f"ledger entries sum to {total}, not 0")
    deadline = time.monotonic() + (30 if holds_must_clear else 0)
    while True:
        rows = await _fetch(db, _SPENT, accounts)
        held = {r["account"]: r["held"] for r in rows if r["held"]}
        if not held or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    for r in rows:
        spent = r["topped_up"] - r["balance"]
        if spent != r["charged"]:
            broken.append(
                f"account {r['account']}: spent {format_micros(spent)} credits but its usage "
                f"charges sum to {format_micros(r['charged'])}"
            )
        if holds_must_clear and r["held"]:
            broken.append(
                f"account {r['account']}: {format_micros(r['held'])} credits still held by "
                "reservations after every response was settled and posted"
            )
    return broken


async def verify_trail(
    db: str,
    tally: Tally,
    accounts: list[str],
    *,
    holds_must_clear: bool,
    rows_timeout_s: float = 60.0,
) -> Verdict:
    """Every whole response of `tally` has exactly one `ok` usage row, posted once; the
    ledger's invariants hold; money is conserved."""
    failures: list[str] = []
    notes: list[str] = []
    whole = tally.whole()
    ids = [o.request_id for o in whole if o.request_id]
    if len(ids) < len(whole):
        failures.append(f"{len(whole) - len(ids)} whole responses carried no x-request-id")
    rows = await wait_rows(db, ids, rows_timeout_s)
    one = [i for i in set(ids) if len(rows.get(i, [])) == 1]
    duplicates = sum(max(len(rows.get(i, [])) - 1, 0) for i in set(ids)) + len(ids) - len(set(ids))
    missing = sorted(set(ids) - set(rows))
    if missing:
        failures.append(
            f"{len(missing)} of {len(set(ids))} whole responses have no usage row "
            f"{rows_timeout_s:.0f}s later (served unbilled), e.g. {missing[:5]}"
        )
    if duplicates:
        failures.append(f"{duplicates} duplicate usage rows or reused request ids")
    not_ok = sorted(i for i in set(ids) if any(r["status"] != "ok" for r in rows.get(i, [])))
    if not_ok:
        failures.append(f"{len(not_ok)} whole responses recorded as not ok, e.g. {not_ok[:5]}")
    posts = await wait_posted(db, sorted(set(ids) - set(missing)), 60.0)
    unposted = sorted(set(ids) - set(missing) - set(posts))
    if unposted:
        failures.append(f"{len(unposted)} usage rows never posted to the ledger: {unposted[:5]}")
    code, out = await ledger_check(db)
    if code != 0:
        failures.append(f"royalty ledger check exited {code}:\n{out[-2000:]}")
    broken = await money(db, accounts, holds_must_clear=holds_must_clear)
    failures += broken
    if not holds_must_clear:
        held = [r for r in await _fetch(db, _SPENT, accounts) if r["held"]]
        if held:
            notes.append(
                "held after the crash: "
                + ", ".join(f"{r['account']} {format_micros(r['held'])}" for r in held)
            )
    return Verdict(
        completed=len(whole),
        with_one_row=len(one),
        duplicates=duplicates,
        posted=len(set(ids)) - len(missing) - len(unposted),
        money_ok=code == 0 and not broken,
        failures=failures,
        notes=notes,
    )


def error_shape_ok(body: bytes) -> bool:
    """OpenAI's `ErrorResponse` (tests/data/openai_schemas.json)."""
    from support.openai_schema import validator

    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return validator("ErrorResponse").is_valid(doc)


# --- the report ---------------------------------------------------------------------------------
@dataclass
class Row:
    fault: str
    sent: int
    completed: int
    rows: int
    duplicates: int
    five_xx: int
    money_ok: bool | None
    """None: not checked (the scenario was skipped)."""
    notes: str = ""


_HEADER = (
    "| fault | requests sent | completed | with exactly one row | duplicates | 5xx "
    "| money conserved | notes |\n|---|---:|---:|---:|---:|---:|---|---|"
)


def _yes_no(flag: bool | None) -> str:
    return "n/a" if flag is None else "yes" if flag else "NO"


@dataclass
class Scoreboard:
    """One row per scenario, rewritten to `path` after each, as a Markdown table."""

    path: Path
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows = [r for r in self.rows if r.fault != row.fault] + [row]
        self.path.write_text(self.render() + "\n")

    def render(self) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [f"Adversarial suite on the real stack ({stamp})", "", _HEADER]
        for r in self.rows:
            notes = r.notes.replace("|", "/").replace("\n", " ")
            lines.append(
                f"| {r.fault} | {r.sent} | {r.completed} | {r.rows} | {r.duplicates} "
                f"| {r.five_xx} | {_yes_no(r.money_ok)} | {notes} |"
            )
        return "\n".join(lines)
