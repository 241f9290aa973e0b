"""The batch (numpy) split equals the per-event reference split, event by event."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from metering.ledger.sources import AdapterInfo
from metering.ledger.split_batch import compute_postings
from metering.pricing import EventParties, Payees, Price, PriceBook, SplitPolicy, split_event

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
SYSTEM = Payees(treasury=1, operator=2, withheld=3)


@given(seed=st.integers(0, 2**32), equal=st.booleans(), n=st.integers(1, 300))
@settings(max_examples=60, deadline=None)
def test_batch_split_matches_the_reference(seed: int, equal: bool, n: int) -> None:
    rng = random.Random(seed)
    people = list(range(100, 112))
    contributors = {a: 1000 + a for a in people}
    owners = {a: 2000 + a for a in people}
    payers = {a: 3000 + a for a in people}
    infos = {
        "a": AdapterInfo(
            100, {a: (1 if equal else rng.randint(1, 50)) for a in rng.sample(people, 5)}
        ),
        "b": AdapterInfo(101, {}),
        "c": AdapterInfo(None, {a: 7 for a in people[:3]}),
    }
    book = PriceBook(
        [Price(1, "m", "", rng.randint(0, 5_000_000), rng.randint(0, 9_000_000), T0)],
        [
            SplitPolicy(1, "", 50_000, 250_000, 200_000, 500_000, T0),
            SplitPolicy(2, "a", 333_333, 333_333, 1, 333_333, T0 + dt.timedelta(days=3)),
        ],
    )
    penalised = {(people[2], ""): "spam", (people[3], "a"): "copied"}
    weights = {}
    events = []
    for i in range(n):
        adapter = rng.choice(["a", "b", "c", "", "unknown"])
        eid = f"e{seed}-{i}"
        if adapter == "a" and rng.random() < 0.2:
            weights[eid] = {rng.choice(people): rng.randint(1, 9) for _ in range(3)}
        events.append({
            "request_id": eid, "account_id": rng.choice(people), "base_model": "m",
            "adapter": adapter or None, "status": rng.choice(["ok", "ok", "error"]),
            "prompt_tokens": rng.randint(0, 5000), "completion_tokens": rng.randint(0, 900),
            "started_at": T0 + dt.timedelta(hours=rng.randint(0, 200)),
        })  # fmt: skip
    rows, sums, withheld, charged = compute_postings(
        events, 9, book, SYSTEM, set(), penalised, payers, {**infos, "unknown": None}, weights,
        contributors, owners,
    )  # fmt: skip
    total_withheld = 0
    for ev, row in zip(events, rows, strict=True):
        adapter = ev["adapter"] or ""
        info = infos.get(adapter)
        if not adapter or info is None:
            parties = EventParties(ev["account_id"], adapter, None, ())
        else:
            src = weights.get(ev["request_id"], info.baseline)
            cs = tuple(sorted((a, contributors[a], w) for a, w in src.items() if w > 0))
            pens = {a: r for (a, ad), r in penalised.items() if ad in ("", adapter) and a in src}
            owner = (
                None
                if info.owner_account_id is None
                else (info.owner_account_id, owners[info.owner_account_id])
            )
            parties = EventParties(ev["account_id"], adapter, owner, cs, pens)
        charge = row[8]
        ref = split_event(
            ev["request_id"], charge, book.policy(adapter, ev["started_at"]), parties, SYSTEM
        )
        assert (row[9], row[10]) == (ref.payees, ref.amounts), ev
        assert sum(row[10]) == charge
        total_withheld += sum(x for _, x, _ in ref.withheld)
    assert sum(x for _, _, x, _ in withheld) == total_withheld
    assert sum(v for v in sums.values()) == 0
    assert charged == sum(r[8] for r in rows)
