"""Money parsing, pricing, one event's split, and the payout Merkle format."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.money import MoneyError, format_micros, parse_credits, parse_month
from metering.payouts import merkle as pm
from metering.pricing import (
    EventParties,
    Payees,
    Price,
    PriceBook,
    SplitPolicy,
    charge_micros,
    split_event,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1", 1_000_000),
        ("12.5", 12_500_000),
        ("0.000001", 1),
        ("3.140000", 3_140_000),
        (" 7. ", 7_000_000),
    ],
)
def test_credits_parse_exactly(text: str, micros: int) -> None:
    assert parse_credits(text) == micros


@pytest.mark.parametrize(
    "text",
    ["0.0000001", "-1", "1e3", "nan", "inf", "", "1,5", "0", "0.1.2", "99999999999999999999"],
)
def test_credits_that_are_not_exact_are_refused(text: str) -> None:
    with pytest.raises(MoneyError):
        parse_credits(text)


@given(st.integers(min_value=1, max_value=2**62 - 1))
def test_format_and_parse_round_trip(micros: int) -> None:
    assert parse_credits(format_micros(micros)) == micros


def test_months_parse() -> None:
    assert parse_month("2026-11") == dt.date(2026, 11, 1)
    for bad in ("2026-13", "2026-1", "26-11", "2026/11"):
        with pytest.raises(ValueError):
            parse_month(bad)


def test_prices_are_effective_dated_with_base_fallback() -> None:
    later = T0 + dt.timedelta(days=10)
    book = PriceBook(
        [
            Price(1, "tiny", "", 1_000_000, 2_000_000, T0),
            Price(2, "tiny", "recipes", 5, 6, T0),
            Price(3, "tiny", "recipes", 7, 8, later),
        ],
        [SplitPolicy(1, "", 50_000, 250_000, 200_000, 500_000, T0)],
    )
    assert book.price("tiny", "recipes", later - dt.timedelta(seconds=1)).id == 2  # type: ignore[union-attr]
    assert book.price("tiny", "recipes", later).id == 3  # type: ignore[union-attr]
    assert book.price("tiny", "legal", later).id == 1  # type: ignore[union-attr]
    assert book.price("tiny", "", T0 - dt.timedelta(days=1)) is None
    assert book.price("other", "", later) is None
    assert book.policy("recipes", later).id == 1
    # 1000 prompt + 500 completion tokens at 1 and 2 credits per million: 0.002 credits.
    assert charge_micros(book.price("tiny", "", later), 1000, 500) == 2000
    assert charge_micros(Price(9, "t", "", 1, 1, T0), 1, 0) == 0  # 0.000001 micro rounds down
    assert charge_micros(Price(9, "t", "", 500_000, 0, T0), 1, 0) == 1  # half rounds up


def test_a_policy_must_sum_to_one_million_ppm() -> None:
    with pytest.raises(ValueError):
        SplitPolicy(1, "", 1, 1, 1, 1, T0)


SYSTEM = Payees(treasury=1, operator=2, withheld=3)
POLICY = SplitPolicy(1, "", 50_000, 250_000, 200_000, 500_000, T0)


@given(
    charge=st.integers(min_value=0, max_value=10**12),
    weights=st.lists(st.integers(min_value=1, max_value=1000), min_size=0, max_size=6),
    payer=st.integers(min_value=100, max_value=110),
    owner=st.none() | st.integers(min_value=100, max_value=110),
)
def test_every_split_sums_to_the_charge(
    charge: int, weights: list[int], payer: int, owner: int | None
) -> None:
    contributors = [(100 + i, 1000 + i, w) for i, w in enumerate(weights)]
    parties = EventParties(
        payer_account=payer,
        adapter="recipes",
        owner=None if owner is None else (owner, 2000 + owner),
        contributors=contributors,
        penalties={101: "spam"},
    )
    split = split_event("ev-1", charge, POLICY, parties, SYSTEM)
    assert sum(split.amounts) == charge
    withheld = sum(x for p, x in zip(split.payees, split.amounts, strict=True) if p == 3)
    assert withheld == sum(w[1] for w in split.withheld)
    # nobody pays themselves
    assert 1000 + (payer - 100) not in split.payees or payer - 100 >= len(weights)
    assert 2000 + payer not in split.payees


def test_self_dealing_and_base_model_shares() -> None:
    parties = EventParties(
        payer_account=7, adapter="legal", owner=(7, 70), contributors=[(8, 80, 1), (7, 71, 1)]
    )
    split = split_event("ev", 1_000_000, POLICY, parties, SYSTEM)
    assert dict(zip(split.payees, split.amounts, strict=True)) == {
        1: 50_000, 2: 250_000, 80: 250_000, 3: 450_000,
    }  # fmt: skip
    assert sorted(r for _, _, r in split.withheld) == [
        "self-dealing: the payer is a data contributor of adapter 'legal'",
        "self-dealing: the payer owns adapter 'legal'",
    ]
    base = split_event("ev", 1_000_000, POLICY, EventParties(7, "", None, ()), SYSTEM)
    assert dict(zip(base.payees, base.amounts, strict=True)) == {1: 750_000, 2: 250_000}


def test_merkle_proofs_verify_and_reject_tampering() -> None:
    for n in range(1, 18):
        leaves = [pm.leaf_hash("2026-11", f"contributor:p{i}", i * 7) for i in range(n)]
        root, proofs = pm.build(leaves)
        for i in range(n):
            assert pm.verify("2026-11", f"contributor:p{i}", i * 7, proofs[i], root)
            assert not pm.verify("2026-11", f"contributor:p{i}", i * 7 + 1, proofs[i], root)
            assert not pm.verify("2026-12", f"contributor:p{i}", i * 7, proofs[i], root)
        if n > 1:
            # an inner node presented as a leaf does not verify (domain separation)
            assert not pm.verify("2026-11", "x", 0, proofs[0][1:], root)
    assert pm.build([]) == (pm.EMPTY_ROOT, [])


def test_merkle_leaf_encoding_is_the_documented_one() -> None:
    # docs/payouts.md, by hand: 0x00 || period || u32be(len) || payee || u64be(amount)
    payee = b"contributor:alice"
    expected = hashlib.sha256(
        b"\x00" + b"2026-11" + struct.pack(">I", len(payee)) + payee + struct.pack(">Q", 1_250_000)
    ).digest()
    assert pm.leaf_hash("2026-11", "contributor:alice", 1_250_000) == expected
    a, b, c = (pm.leaf_hash("2026-11", p, 1) for p in "abc")
    root, proofs = pm.build([a, b, c])
    ab = hashlib.sha256(b"\x01" + a + b).digest()
    assert root == hashlib.sha256(b"\x01" + ab + c).digest()
    assert proofs[2] == [("L", ab.hex())]
    assert proofs[0] == [("R", b.hex()), ("R", c.hex())]


def test_the_worked_example_in_docs_payouts_md_is_what_the_code_computes() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "payouts.md").read_text()
    items = [
        ("contributor:alice", 1_250_000),
        ("contributor:bob", 750_000),
        ("operator", 500_000),
        ("treasury", 100_000),
    ]
    leaves = [pm.leaf_hash("2026-11", p, a) for p, a in items]
    root, proofs = pm.build(leaves)
    assert root.hex() in doc
    assert pm.EMPTY_ROOT.hex() in doc
    for leaf in leaves:
        assert leaf.hex() in doc
    for _, sibling in proofs[0]:
        assert sibling in doc
    # and the standalone verifier printed in the document accepts it
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/payouts.md", "exec"), {})
