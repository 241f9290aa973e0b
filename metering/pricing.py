"""Prices, split policies and the pure (no I/O) computation of one event's charge and splits.

Prices are versioned and effective-dated per (base model, adapter); adapter "" is the base
model's own price and the fallback for an adapter without one. Split policies are versioned
per adapter the same way ("" = the default policy). The row id of each is its version, and
both versions are stored with every posting.

charge = round_half_up((prompt_tokens * input_per_m + completion_tokens * output_per_m) / 1e6)
in integer arithmetic. Requests that ended in an error are not charged; a model without any
price is free (charge 0, price version NULL).

Splitting one charge:
1. the policy's four parts (protocol, operator, adapter owner, data) by largest remainder;
2. the data part over contributors by their attribution weights (largest remainder, salted
   with the event id). A request to the base model (no adapter), or an adapter without
   contributors, has no adapter owner or data contributors: those parts go to the protocol
   treasury, which paid for the base model.
3. anti-gaming: a share whose payee is the payer (or the adapter owner's share when the payer
   owns the adapter) goes to `withheld` with a reason; so does a penalised contributor's.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from metering.apportion import largest_remainder

PPM = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    id: int
    base_model: str
    adapter: str
    input_micros_per_m: int
    output_micros_per_m: int
    effective_from: dt.datetime


@dataclass(frozen=True, slots=True)
class SplitPolicy:
    id: int
    adapter: str
    protocol_ppm: int
    operator_ppm: int
    owner_ppm: int
    data_ppm: int
    effective_from: dt.datetime

    def __post_init__(self) -> None:
        parts = (self.protocol_ppm, self.operator_ppm, self.owner_ppm, self.data_ppm)
        if min(parts) < 0 or sum(parts) != PPM:
            raise ValueError("split policy parts must be >= 0 and sum to 1,000,000 ppm")


class _Versioned:
    """Effective-dated versions per key; `at(key, t)` is the latest version in force at t."""

    def __init__(self) -> None:
        self._times: dict[object, list[dt.datetime]] = {}
        self._items: dict[object, list[object]] = {}

    def add(self, key: object, effective_from: dt.datetime, item: object) -> None:
        times = self._times.setdefault(key, [])
        items = self._items.setdefault(key, [])
        i = bisect.bisect_right(times, effective_from)
        times.insert(i, effective_from)
        items.insert(i, item)

    def at(self, key: object, t: dt.datetime) -> object | None:
        times = self._times.get(key)
        if not times:
            return None
        i = bisect.bisect_right(times, t)
        return self._items[key][i - 1] if i else None


class PriceBook:
    """All prices and policies, loaded once per posting batch (they are few)."""

    def __init__(self, prices: Sequence[Price] = (), policies: Sequence[SplitPolicy] = ()) -> None:
        self._prices = _Versioned()
        self._policies = _Versioned()
        for p in prices:
            self._prices.add((p.base_model, p.adapter), p.effective_from, p)
        for s in policies:
            self._policies.add(s.adapter, s.effective_from, s)

    def price(self, base_model: str, adapter: str, t: dt.datetime) -> Price | None:
        found = self._prices.at((base_model, adapter), t)
        if found is None and adapter:
            found = self._prices.at((base_model, ""), t)
        return found  # type: ignore[return-value]

    def latest(
        self, base_model: str, adapter: str
    ) -> tuple[Price | None, SplitPolicy, dt.datetime]:
        """The versions in force from the returned time on (no later version exists): a batch
        prices every event at or after that time without a lookup."""
        end = dt.datetime.max.replace(tzinfo=dt.UTC)
        price, policy = self.price(base_model, adapter, end), self.policy(adapter, end)
        since = max(policy.effective_from, price.effective_from if price else policy.effective_from)
        return price, policy, since

    def policy(self, adapter: str, t: dt.datetime) -> SplitPolicy:
        found = self._policies.at(adapter, t)
        if found is None and adapter:
            found = self._policies.at("", t)
        if found is None:
            raise LookupError(f"no split policy in force at {t.isoformat()}")
        return found  # type: ignore[return-value]


def charge_micros(price: Price | None, prompt_tokens: int, completion_tokens: int) -> int:
    if price is None:
        return 0
    scaled = (
        prompt_tokens * price.input_micros_per_m + completion_tokens * price.output_micros_per_m
    )
    return (scaled + PPM // 2) // PPM


def estimate_micros(price: Price | None, prompt_tokens: int, max_completion_tokens: int) -> int:
    """The most a request can cost (budgets reserve this before serving)."""
    return charge_micros(price, prompt_tokens, max_completion_tokens)


@dataclass(frozen=True, slots=True)
class Payees:
    """Ledger account ids of the system payees."""

    treasury: int
    operator: int
    withheld: int


@dataclass(slots=True)
class Split:
    """One event's split: `amounts[i]` to ledger account `payees[i]`; sums to `charge`."""

    charge: int
    payees: list[int] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)
    withheld: list[tuple[int, int, str]] = field(default_factory=list)
    """(beneficiary ledger account, amount, reason) for each share sent to `withheld`."""

    def add(self, account: int, amount: int) -> None:
        if amount:
            self.payees.append(account)
            self.amounts.append(amount)


@dataclass(frozen=True, slots=True)
class EventParties:
    """Who is involved in one event, as (gateway account id -> ledger account id) lookups."""

    payer_account: int
    adapter: str
    owner: tuple[int, int] | None
    """(owner account id, its adapter_owner ledger account) or None (base model)."""
    contributors: Sequence[tuple[int, int, int]]
    """(contributor account id, its contributor ledger account, weight > 0)."""
    penalties: Mapping[int, str] = field(default_factory=dict)
    """contributor account id -> reason its credits are withheld."""


def split_event(
    event_id: str, charge: int, policy: SplitPolicy, parties: EventParties, system: Payees
) -> Split:
    out = Split(charge=charge)
    if charge == 0:
        return out
    salt = event_id.encode()
    protocol, operator, owner_part, data_part = largest_remainder(
        charge,
        (policy.protocol_ppm, policy.operator_ppm, policy.owner_ppm, policy.data_ppm),
        ("protocol", "operator", "owner", "data"),
        salt,
    )
    withheld = 0
    if parties.owner is None:
        protocol += owner_part
        owner_part = 0
    if not parties.contributors:
        protocol += data_part
        data_part = 0
    out.add(system.treasury, protocol)
    out.add(system.operator, operator)
    if owner_part:
        owner_account, owner_ledger = parties.owner  # type: ignore[misc]
        if owner_account == parties.payer_account:
            withheld += owner_part
            out.withheld.append(
                (
                    owner_ledger,
                    owner_part,
                    f"self-dealing: the payer owns adapter {parties.adapter!r}",
                )
            )
        else:
            out.add(owner_ledger, owner_part)
    if data_part:
        cs = parties.contributors
        shares = largest_remainder(data_part, [w for _, _, w in cs], [a for a, _, _ in cs], salt)
        for (account, ledger, _), share in zip(cs, shares, strict=True):
            if not share:
                continue
            if account == parties.payer_account:
                withheld += share
                out.withheld.append(
                    (
                        ledger,
                        share,
                        f"self-dealing: the payer is a data contributor of adapter {parties.adapter!r}",
                    )
                )
            elif account in parties.penalties:
                withheld += share
                out.withheld.append((ledger, share, f"penalty: {parties.penalties[account]}"))
            else:
                out.add(ledger, share)
    out.add(system.withheld, withheld)
    return out
