"""Weights formula royalty-weights/2: exact sums, the cap (which never reorders evidence
holders), determinism, and the documented cases."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution import weights as weights_module
from attribution.spans import Span
from attribution.weights import (
    DENOMINATOR,
    WEIGHTS_VERSION,
    WeightsError,
    compute_weights,
    largest_remainder,
)


@dataclass(frozen=True)
class Evidence:
    length: int
    record_ids: tuple[int, ...]


@st.composite
def scenarios(draw):
    n_contributors = draw(st.integers(1, 8))
    contributors = draw(
        st.lists(
            st.integers(1, 10**9), min_size=n_contributors, max_size=n_contributors, unique=True
        )
    )
    baseline = {c: draw(st.integers(1, 50)) for c in contributors}
    record_contributors = {}
    for c in contributors:
        for _ in range(draw(st.integers(0, 4))):
            record_contributors[draw(st.integers(1, 10**6))] = c
    records = sorted(record_contributors)
    spans = []
    if records:
        for _ in range(draw(st.integers(0, 6))):
            rids = draw(st.lists(st.sampled_from(records), min_size=1, max_size=4))
            spans.append(Evidence(draw(st.integers(1, 200)), tuple(rids)))
    influence = None
    if records and draw(st.booleans()):
        influence = {
            r: draw(st.floats(-5, 5, allow_nan=False, allow_infinity=False))
            for r in draw(st.lists(st.sampled_from(records), max_size=6))
        }
    cap = draw(st.fractions(min_value=Fraction(1, 100), max_value=1).filter(lambda f: f > 0))
    return spans, record_contributors, baseline, influence, cap


def _weights(scenario):  # type: ignore[no-untyped-def]
    spans, record_contributors, baseline, influence, cap = scenario
    return compute_weights(
        spans=spans, record_contributors=record_contributors, baseline=baseline,
        influence=influence, cap=cap,
    )  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_weights_sum_exactly_respect_the_cap_and_agree_per_contributor(scenario):
    spans, record_contributors, baseline, influence, cap = scenario
    w = _weights(scenario)
    assert w.version == WEIGHTS_VERSION
    parts = dict(w.contributors)
    assert sum(parts.values()) == DENOMINATOR
    assert all(p > 0 for p in parts.values())
    assert set(parts) <= set(baseline), "weight for a contributor outside the snapshot"
    effective_cap = max(cap, Fraction(1, len(baseline)))
    for p in parts.values():
        # the cap holds up to the 1-part rounding of the apportionment
        assert p <= math.floor(effective_cap * DENOMINATOR) + 1
    # records and pooled entries re-add to each contributor's weight, hence to the total
    per_contributor: dict[int, int] = {}
    for rid, cid, p in w.records:
        assert record_contributors[rid] == cid and p > 0
        per_contributor[cid] = per_contributor.get(cid, 0) + p
    for cid, p in w.pooled:
        per_contributor[cid] = per_contributor.get(cid, 0) + p
    assert per_contributor == parts
    assert math.isclose(sum(w.contributor_floats().values()), 1.0)
    # deterministic, whatever the order the evidence arrives in
    again = compute_weights(
        spans=list(reversed(spans)),
        record_contributors=dict(reversed(list(record_contributors.items()))),
        baseline=dict(reversed(list(baseline.items()))),
        influence=dict(reversed(list(influence.items()))) if influence else influence,
        cap=cap,
    )
    assert again == w


def _contributor_evidence(spans, record_contributors, influence) -> dict[int, Fraction]:
    """Steps 1-4 written out independently of the module: each contributor's evidence share."""
    span_scores: dict[int, Fraction] = {}
    for span in spans:
        rids = sorted(set(span.record_ids))
        for r in rids:
            span_scores[r] = span_scores.get(r, Fraction(0)) + Fraction(span.length, len(rids))
    inf = {r: Fraction(v) for r, v in (influence or {}).items() if v > 0}

    def normal(d: dict[int, Fraction]) -> dict[int, Fraction]:
        total = sum(d.values(), Fraction(0))
        return {k: v / total for k, v in d.items()} if total else {}

    s, i = normal(span_scores), normal(inf)
    mix = Fraction(1, 2) if s and i else Fraction(1)
    per_record = {r: mix * s.get(r, 0) + (1 - mix if s else 1) * i.get(r, 0) for r in s.keys() | i}
    out: dict[int, Fraction] = {}
    for r, v in per_record.items():
        if v > 0:
            c = record_contributors[r]
            out[c] = out.get(c, Fraction(0)) + v
    return out


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_the_cap_never_reorders_evidence_holders(scenario):
    spans, record_contributors, baseline, influence, cap = scenario
    w = _weights(scenario)
    parts = dict(w.contributors)
    evidence = _contributor_evidence(spans, record_contributors, influence)
    cap = max(cap, Fraction(1, len(baseline)))
    holders = sorted(evidence, key=lambda c: evidence[c])
    # more evidence never ends with fewer parts (ties allowed)
    for low, high in zip(holders, holders[1:], strict=False):
        if evidence[high] > evidence[low]:
            assert parts.get(high, 0) >= parts.get(low, 0), (evidence, parts)
    # when the contributors without evidence can absorb the excess, every holder keeps
    # exactly min(evidence, cap), up to the 1 ppm rounding: nothing else moves them
    excess = sum((v - cap for v in evidence.values() if v > cap), Fraction(0))
    pool = [c for c in baseline if c not in evidence]
    if evidence and excess <= cap * len(pool):
        for c, v in evidence.items():
            assert abs(parts.get(c, 0) - min(v, cap) * DENOMINATOR) < 1, (c, evidence, parts)
        for c in pool:
            assert parts.get(c, 0) <= math.floor(cap * DENOMINATOR) + 1


def test_no_evidence_gives_the_baseline_share():
    w = compute_weights(
        spans=[], record_contributors={}, baseline={1: 1, 2: 1, 3: 1}, cap=Fraction(1)
    )
    assert w.method == "baseline"
    # 1/3 each: the one leftover part goes to the smallest id
    assert w.contributors == ((1, 333334), (2, 333333), (3, 333333))
    assert w.records == () and sum(p for _, p in w.pooled) == DENOMINATOR
    # negative influence only is no evidence either
    w = compute_weights(
        spans=[],
        record_contributors={5: 1},
        baseline={1: 3, 2: 1},
        influence={5: -2.0},
        cap=Fraction(1),
    )
    assert (w.method, w.contributors) == ("baseline", ((1, 750000), (2, 250000)))


def test_span_lengths_are_split_over_the_records_they_occur_in():
    spans = [
        Span(0, 30, 1, (10,), (1,)),
        Span(40, 60, 2, (10, 20), (1, 2)),  # 20 tokens, half each
    ]
    w = compute_weights(
        spans=spans,
        record_contributors={10: 1, 20: 2},
        baseline={1: 5, 2: 5, 3: 5},
        cap=Fraction(1),
    )
    assert w.method == "spans"
    assert w.contributors == ((1, 800000), (2, 200000))  # 40/50 and 10/50
    assert w.records == ((10, 1, 800000), (20, 2, 200000)) and w.pooled == ()


def test_cap_hands_the_excess_to_contributors_without_evidence():
    spans = [Evidence(90, (10,)), Evidence(10, (20,))]
    w = compute_weights(
        spans=spans,
        record_contributors={10: 1, 20: 2},
        baseline={1: 1, 2: 1, 3: 8},
        cap=Fraction(1, 2),
    )
    # royalty-weights/1 gave 2 the excess (a tie at 1/2, 5x its evidence); now 3, who has no
    # evidence, takes it as baseline and 2 keeps exactly its 0.1
    assert w.contributors == ((1, 500000), (2, 100000), (3, 400000))
    assert w.records == ((10, 1, 500000), (20, 2, 100000))
    assert w.pooled == ((3, 400000),)
    # a lone evidence contributor: the excess goes to the pool, by records in the snapshot
    w = compute_weights(
        spans=[Evidence(5, (10,))],
        record_contributors={10: 1},
        baseline={1: 1, 2: 1, 3: 3},
        cap=Fraction(1, 2),
    )
    assert w.contributors == ((1, 500000), (2, 125000), (3, 375000))
    # cap below 1/n is raised to 1/n: a single contributor gets everything
    w = compute_weights(
        spans=[Evidence(5, (10,))],
        record_contributors={10: 1},
        baseline={1: 4},
        cap=Fraction(1, 10),
    )
    assert w.contributors == ((1, DENOMINATOR),)


def test_the_pool_is_water_filled_under_the_cap():
    # 3/4 of excess over 2, 3, 4, 5 by records: 2 would get 3/4 * 100/104 > 1/4, so it gets
    # 1/4 and 3, 4, 5 share the other 1/2 by records (1:1:2)
    w = compute_weights(
        spans=[Evidence(5, (10,))],
        record_contributors={10: 1},
        baseline={1: 1, 2: 100, 3: 1, 4: 1, 5: 2},
        cap=Fraction(1, 4),
    )
    assert w.contributors == ((1, 250000), (2, 250000), (3, 125000), (4, 125000), (5, 250000))
    assert w.records == ((10, 1, 250000),)
    assert w.pooled == ((2, 250000), (3, 125000), (4, 125000), (5, 250000))


def test_holders_share_the_excess_by_evidence_only_when_the_pool_is_full():
    # evidence 0.7 / 0.2 / 0.1, cap 1/3: 1 gives up 11/30, 4 (no evidence) can take 10/30, the
    # last 1/30 goes to 2 and 3 in proportion 2:1, so they end at 2/9 and 1/9 (order kept)
    spans = [Evidence(7, (10,)), Evidence(2, (20,)), Evidence(1, (30,))]
    w = compute_weights(
        spans=spans,
        record_contributors={10: 1, 20: 2, 30: 3},
        baseline={1: 1, 2: 1, 3: 1, 4: 1},
        cap=Fraction(1, 3),
    )
    assert w.contributors == ((1, 333334), (2, 222222), (3, 111111), (4, 333333))
    assert w.records == ((10, 1, 333334), (20, 2, 200000), (30, 3, 100000))
    assert w.pooled == ((2, 22222), (3, 11111), (4, 333333))
    # no one without evidence: two contributors, the cap is 1/2 and a tie cannot be avoided
    w = compute_weights(
        spans=[Evidence(9, (10,)), Evidence(1, (20,))],
        record_contributors={10: 1, 20: 2},
        baseline={1: 1, 2: 1},
    )
    assert w.contributors == ((1, 500000), (2, 500000))


def test_spans_and_influence_mix_half_and_half():
    w = compute_weights(
        spans=[Evidence(10, (10,))],
        record_contributors={10: 1, 20: 2},
        baseline={1: 1, 2: 1},
        influence={20: 0.25, 10: 0.0},
        cap=Fraction(1),
    )
    assert w.method == "spans+influence"
    assert w.contributors == ((1, 500000), (2, 500000))


def test_bad_evidence_is_refused():
    with pytest.raises(WeightsError, match="no records"):
        compute_weights(spans=[], record_contributors={}, baseline={})
    with pytest.raises(WeightsError, match="no known contributor"):
        compute_weights(spans=[Evidence(3, (7,))], record_contributors={}, baseline={1: 1})
    with pytest.raises(WeightsError, match="outside|no records in the snapshot"):
        compute_weights(spans=[Evidence(3, (7,))], record_contributors={7: 9}, baseline={1: 1})
    with pytest.raises(WeightsError, match="cap"):
        compute_weights(spans=[], record_contributors={}, baseline={1: 1}, cap=Fraction(0))
    with pytest.raises((ValueError, OverflowError)):
        compute_weights(
            spans=[], record_contributors={1: 1}, baseline={1: 1}, influence={1: float("nan")}
        )


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.integers(0, 50), st.fractions(min_value=0, max_value=10), min_size=1),
    st.integers(0, 10**7),
)
def test_largest_remainder_is_exact_and_within_one_of_the_quota(shares, total):
    if sum(shares.values()) == 0:
        with pytest.raises(WeightsError):
            largest_remainder(shares, total)
        return
    parts = largest_remainder(shares, total)
    assert sum(parts.values()) == total
    whole = sum(shares.values())
    for key, share in shares.items():
        quota = share * total / whole
        assert math.floor(quota) <= parts[key] <= math.ceil(quota)
    shuffled = list(shares.items())
    random.Random(0).shuffle(shuffled)
    assert largest_remainder(dict(shuffled), total) == parts


def test_any_integer_record_id_works_next_to_the_pooled_share():
    # record ids -1 and 0 next to a holder's pooled share (nobody without evidence: the
    # excess above the cap goes to the other holder)
    w = compute_weights(
        spans=[Evidence(9, (-1,)), Evidence(1, (0,))],
        record_contributors={-1: 1, 0: 2},
        baseline={1: 1, 2: 1},
        cap=Fraction(1, 2),
    )
    assert w.contributors == ((1, 500000), (2, 500000))
    assert w.records == ((-1, 1, 500000), (0, 2, 100000))
    assert w.pooled == ((2, 400000),)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.integers(-5, 10**6), st.integers(0, 1000), min_size=1, max_size=12).filter(
        lambda b: any(b.values())
    ),
    st.fractions(min_value=Fraction(1, 50), max_value=1).filter(lambda f: f > 0),
)
def test_the_integer_baseline_path_equals_the_general_formula(baseline, cap):
    fast = compute_weights(spans=[], record_contributors={}, baseline=baseline, cap=cap)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weights_module, "_FAST_BASELINE", False)
        general = compute_weights(spans=[], record_contributors={}, baseline=baseline, cap=cap)
    assert fast == general


def test_baseline_over_thousands_of_contributors_is_cheap():
    import time

    baseline = {c: 1 + c % 7 for c in range(5000)}
    started = time.process_time()
    w = compute_weights(spans=[], record_contributors={}, baseline=baseline)
    assert sum(p for _, p in w.contributors) == DENOMINATOR
    # generous bound for a loaded 2-core machine; the Fraction path took ~100-200 ms here
    assert time.process_time() - started < 0.08
