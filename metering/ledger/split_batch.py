"""A whole batch of events priced and split at once (numpy), identical to the per-event
reference (`metering.pricing.split_event`, `metering.apportion.largest_remainder`), which
tests compare it with.

Events are grouped by what their split depends on besides the charge: the policy version and
the adapter's parties (or the event's own attribution weights). Each group is two vectorised
largest-remainder splits (policy parts, then the data part over contributors); self-dealing
and penalties move cells to `withheld`. Integer arithmetic throughout (int64, with a guard
that falls back to Python integers where a product could overflow).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from metering.apportion import h64
from metering.ledger.book import open_month_for
from metering.ledger.sources import AdapterInfo
from metering.money import month_start
from metering.pricing import (
    EventParties,
    Payees,
    Price,
    PriceBook,
    SplitPolicy,
    charge_micros,
    split_event,
)

POLICY_KEYS = ("protocol", "operator", "owner", "data")
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_SAFE = 1 << 62


def splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _M1
        x = (x ^ (x >> np.uint64(30))) * _M2
        x = (x ^ (x >> np.uint64(27))) * _M3
    return x ^ (x >> np.uint64(31))


def key_hashes(keys: Sequence[object]) -> np.ndarray:
    return np.array([h64(str(k).encode()) for k in keys], dtype=np.uint64)


def apportion_rows(
    totals: np.ndarray, weights: np.ndarray, event_h: np.ndarray, key_h: np.ndarray
) -> np.ndarray:
    """Row i: `totals[i]` split by `weights` (largest remainder, ties to the smallest
    splitmix64(event_h[i] ^ key_h[j])). Shape (len(totals), len(weights)), int64."""
    wsum = int(weights.sum())
    q = totals[:, None] * weights[None, :]
    floor = q // wsum
    rem = q % wsum
    left = totals - floor.sum(axis=1)
    most = int(left.max()) if len(left) else 0
    if most == 0:
        return floor
    tb = splitmix64(event_h[:, None] ^ key_h[None, :])
    order = np.lexsort((tb, -rem), axis=-1)[:, :most]
    bump = np.arange(most)[None, :] < left[:, None]
    np.put_along_axis(floor, order, np.take_along_axis(floor, order, axis=1) + bump, axis=1)
    return floor


Withheld = dict[tuple[dt.date, int, str], int]
Sums = dict[tuple[int, dt.date], int]


def compute_postings(
    events: Sequence[Mapping[str, object]],
    txn: int,
    book: PriceBook,
    system: Payees,
    closed: set[dt.date],
    penalised: Mapping[tuple[int, str], str],
    payers: Mapping[int, int],
    infos: Mapping[str, AdapterInfo | None],
    weights: Mapping[str, Mapping[int, int]],
    contributors: Mapping[int, int],
    owners: Mapping[int, int],
) -> tuple[
    list[tuple[object, ...]],
    dict[tuple[int, dt.date], int],
    list[tuple[dt.date, int, int, str]],
    int,
]:
    """Posting rows, per-(account, month) sums, withheld items (month, beneficiary, amount,
    reason), total charged."""
    n = len(events)
    ids: list[str] = [str(e["request_id"]) for e in events]
    accounts: list[int] = [int(e["account_id"]) for e in events]  # type: ignore[call-overload]
    adapters: list[str] = [str(e["adapter"] or "") for e in events]
    days: list[dt.date] = []
    months: list[dt.date] = []
    charges: list[int] = []
    price_ids: list[int | None] = []
    policies: list[SplitPolicy] = []
    day_months: dict[dt.date, dt.date] = {}
    latest: dict[tuple[str, str], tuple[Price | None, SplitPolicy, dt.datetime]] = {}
    for e, adapter in zip(events, adapters, strict=True):
        started: dt.datetime = e["started_at"]  # type: ignore[assignment]
        day = (started if started.tzinfo is dt.UTC else started.astimezone(dt.UTC)).date()
        month = day_months.get(day)
        if month is None:
            month = day_months[day] = open_month_for(month_start(day), closed)
        days.append(day)
        months.append(month)
        base = str(e["base_model"])
        now = latest.get((base, adapter))
        if now is None:
            now = latest[(base, adapter)] = book.latest(base, adapter)
        if started >= now[2]:
            price, policy = now[0], now[1]
        else:
            price, policy = book.price(base, adapter, started), book.policy(adapter, started)
        price_ids.append(price.id if price else None)
        charges.append(
            0 if e["status"] == "error"
            else charge_micros(price, e["prompt_tokens"], e["completion_tokens"])  # type: ignore[arg-type]
        )  # fmt: skip
        policies.append(policy)

    groups: dict[tuple[int, str, str | None], list[int]] = {}
    for i in range(n):
        own_weights = ids[i] if (adapters[i] and ids[i] in weights) else None
        groups.setdefault((policies[i].id, adapters[i], own_weights), []).append(i)

    payees_of: list[list[int]] = [[] for _ in range(n)]
    amounts_of: list[list[int]] = [[] for _ in range(n)]
    sums: dict[tuple[int, dt.date], int] = {}
    withheld: Withheld = {}
    for (_, adapter, own_weights), rows in groups.items():
        policy = policies[rows[0]]
        parties = group_parties(
            adapter,
            infos.get(adapter),
            weights.get(own_weights) if own_weights else None,
            contributors,
            owners,
            penalised,
        )
        c = [charges[i] for i in rows]
        if max(c) * max(1_000_000, sum(w for _, _, w in parties.contributors)) >= _SAFE:
            _split_scalar(
                rows,
                ids,
                accounts,
                charges,
                months,
                policy,
                parties,
                system,
                payees_of,
                amounts_of,
                withheld,
                sums,
            )
        else:
            _split_group(
                rows,
                ids,
                accounts,
                c,
                months,
                policy,
                parties,
                system,
                payees_of,
                amounts_of,
                withheld,
                sums,
            )

    out_rows: list[tuple[object, ...]] = []
    charged = 0
    for i in range(n):
        payer = payers[accounts[i]]
        out_rows.append((
            ids[i], txn, months[i], days[i], payer, adapters[i], price_ids[i], policies[i].id,
            charges[i], payees_of[i], amounts_of[i],
        ))  # fmt: skip
        if charges[i]:  # (the payees' side was summed per group)
            charged += charges[i]
            key = (payer, months[i])
            sums[key] = sums.get(key, 0) - charges[i]
    items = [(m, b, x, r) for (m, b, r), x in withheld.items()]
    return out_rows, sums, items, charged


def group_parties(
    adapter: str, info: AdapterInfo | None, per_event: Mapping[int, int] | None,
    contributors: Mapping[int, int], owners: Mapping[int, int], penalised: Mapping[tuple[int, str], str],
) -> EventParties:  # fmt: skip
    """The payer-independent parties of a group (payer_account is filled per event)."""
    if not adapter or info is None:
        return EventParties(payer_account=-1, adapter=adapter, owner=None, contributors=())
    owner = None
    if info.owner_account_id is not None:
        owner = (info.owner_account_id, owners[info.owner_account_id])
    source = per_event if per_event is not None else info.baseline
    cs = tuple(sorted((a, contributors[a], int(w)) for a, w in source.items() if w > 0))
    pens = {}
    for a, _, _ in cs:
        reason = penalised.get((a, adapter)) or penalised.get((a, ""))
        if reason is not None:
            pens[a] = reason
    return EventParties(
        payer_account=-1, adapter=adapter, owner=owner, contributors=cs, penalties=pens
    )


def _split_scalar(
    rows: list[int], ids: list[str], accounts: list[int], charges: list[int], months: list[dt.date],
    policy: SplitPolicy, parties: EventParties, system: Payees,
    payees_of: list[list[int]], amounts_of: list[list[int]], withheld: Withheld, sums: Sums,
) -> None:  # fmt: skip
    from dataclasses import replace

    for i in rows:
        split = split_event(
            ids[i], charges[i], policy, replace(parties, payer_account=accounts[i]), system
        )
        payees_of[i], amounts_of[i] = split.payees, split.amounts
        for p, x in zip(split.payees, split.amounts, strict=True):
            sums[(p, months[i])] = sums.get((p, months[i]), 0) + x
        for b, x, r in split.withheld:
            withheld[(months[i], b, r)] = withheld.get((months[i], b, r), 0) + x


def _split_group(
    rows: list[int], ids: list[str], accounts: list[int], c: list[int], months: list[dt.date],
    policy: SplitPolicy, parties: EventParties, system: Payees,
    payees_of: list[list[int]], amounts_of: list[list[int]], withheld: Withheld, sums: Sums,
) -> None:  # fmt: skip
    m = len(rows)
    totals = np.array(c, dtype=np.int64)
    eh = np.array(
        [int.from_bytes(hashlib.sha256(ids[i].encode()).digest()[:8], "big") for i in rows],
        dtype=np.uint64,
    )
    w4 = np.array(
        [policy.protocol_ppm, policy.operator_ppm, policy.owner_ppm, policy.data_ppm],
        dtype=np.int64,
    )
    parts = apportion_rows(totals, w4, eh, key_hashes(POLICY_KEYS))
    protocol, operator, owner_part, data_part = (parts[:, j].copy() for j in range(4))
    if parties.owner is None:
        protocol += owner_part
        owner_part[:] = 0
    cs = parties.contributors
    if not cs:
        protocol += data_part
        data_part[:] = 0
        shares = np.zeros((m, 0), dtype=np.int64)
    else:
        wc = np.array([w for _, _, w in cs], dtype=np.int64)
        shares = apportion_rows(data_part, wc, eh, key_hashes([a for a, _, _ in cs]))
    held = np.zeros(m, dtype=np.int64)
    payer = np.array([accounts[i] for i in rows], dtype=np.int64)
    label = repr(parties.adapter)
    if parties.owner is not None:
        mask = (payer == parties.owner[0]) & (owner_part > 0)
        if mask.any():
            held += np.where(mask, owner_part, 0)
            _note(
                withheld,
                months,
                rows,
                mask,
                owner_part,
                parties.owner[1],
                f"self-dealing: the payer owns adapter {label}",
            )
            owner_part = np.where(mask, 0, owner_part)
    for j, (account, ledger, _) in enumerate(cs):
        col = shares[:, j]
        mask = (payer == account) & (col > 0)
        if mask.any():
            held += np.where(mask, col, 0)
            _note(
                withheld,
                months,
                rows,
                mask,
                col,
                ledger,
                f"self-dealing: the payer is a data contributor of adapter {label}",
            )
            shares[:, j] = np.where(mask, 0, col)
            col = shares[:, j]
        if account in parties.penalties:
            mask = col > 0
            if mask.any():
                held += col
                _note(
                    withheld,
                    months,
                    rows,
                    mask,
                    col,
                    ledger,
                    f"penalty: {parties.penalties[account]}",
                )
                shares[:, j] = 0
    columns = [system.treasury, system.operator]
    blocks = [protocol[:, None], operator[:, None]]
    if parties.owner is not None:
        columns.append(parties.owner[1])
        blocks.append(owner_part[:, None])
    columns += [ledger for _, ledger, _ in cs]
    blocks.append(shares)
    columns.append(system.withheld)
    blocks.append(held[:, None])
    table = np.hstack(blocks)
    # The ledger entries' side, per (payee, month), summed by numpy rather than per event.
    group_months = [months[i] for i in rows]
    distinct = set(group_months)
    for month in distinct:
        if len(distinct) == 1:
            totals = table.sum(axis=0)
        else:
            mask = np.fromiter((x == month for x in group_months), dtype=bool, count=m)
            totals = table[mask].sum(axis=0)
        for account, total in zip(columns, totals.tolist(), strict=True):
            if total:
                sums[(account, month)] = sums.get((account, month), 0) + total
    matrix = table.tolist()
    for r, i in enumerate(rows):
        row = matrix[r]
        payees_of[i] = [p for p, x in zip(columns, row, strict=True) if x]
        amounts_of[i] = [x for x in row if x]


def _note(
    withheld: Withheld,
    months: list[dt.date],
    rows: list[int],
    mask: np.ndarray,
    amounts: np.ndarray,
    beneficiary: int,
    reason: str,
) -> None:
    for r in np.nonzero(mask)[0].tolist():
        key = (months[rows[r]], beneficiary, reason)
        withheld[key] = withheld.get(key, 0) + int(amounts[r])
