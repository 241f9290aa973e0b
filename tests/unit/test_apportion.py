"""Largest-remainder apportionment: exact, within one unit of the quota, deterministic, and
without a systematic winner of the leftover units."""

from __future__ import annotations

import collections
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.apportion import largest_remainder

weights_st = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=12).filter(
    lambda ws: sum(ws) > 0
)


@given(
    total=st.integers(min_value=0, max_value=10**15),
    weights=weights_st,
    salt=st.binary(max_size=16),
)
@settings(max_examples=500)
def test_shares_are_exact_and_within_one_unit_of_the_quota(
    total: int, weights: list[int], salt: bytes
) -> None:
    keys = list(range(len(weights)))
    shares = largest_remainder(total, weights, keys, salt)
    assert sum(shares) == total
    wsum = sum(weights)
    for w, s in zip(weights, shares, strict=True):
        quota = Fraction(total * w, wsum)
        assert quota - 1 < s < quota + 1
        assert s >= 0
        if w == 0:
            assert s == 0
    assert largest_remainder(total, weights, keys, salt) == shares  # deterministic


@given(total=st.integers(min_value=0, max_value=10**9), weights=weights_st)
def test_scaling_all_weights_changes_nothing(total: int, weights: list[int]) -> None:
    keys = [f"k{i}" for i in range(len(weights))]
    assert largest_remainder(total, weights, keys, b"e") == largest_remainder(
        total, [3 * w for w in weights], keys, b"e"
    )


@given(
    total=st.integers(min_value=0, max_value=10**9),
    weights=weights_st,
    data=st.data(),
)
def test_a_larger_weight_never_gets_less(
    total: int, weights: list[int], data: st.DataObject
) -> None:
    shares = largest_remainder(total, weights, list(range(len(weights))), b"salt")
    i = data.draw(st.integers(0, len(weights) - 1))
    j = data.draw(st.integers(0, len(weights) - 1))
    if weights[i] > weights[j]:
        assert shares[i] >= shares[j]


def test_leftover_units_are_not_biased_to_one_payee() -> None:
    # One unit, three equal payees: a fixed tie-break would give it to the same payee every
    # time; salted by the event id each gets about a third.
    wins: collections.Counter[str] = collections.Counter()
    for n in range(3000):
        shares = largest_remainder(1, [1, 1, 1], ["alice", "bob", "carol"], f"ev-{n}".encode())
        wins[["alice", "bob", "carol"][shares.index(1)]] += 1
    assert set(wins) == {"alice", "bob", "carol"}
    assert all(850 < c < 1150 for c in wins.values()), wins


@pytest.mark.parametrize(
    ("total", "weights", "err"),
    [(-1, [1], "total"), (5, [0, 0], "not all be zero"), (5, [1, -1], ">= 0")],
)
def test_bad_input_is_refused(total: int, weights: list[int], err: str) -> None:
    with pytest.raises(ValueError, match=err):
        largest_remainder(total, weights, list(range(len(weights))), b"")
