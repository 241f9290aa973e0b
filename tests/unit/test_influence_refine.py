"""Influence refinement and the fake scorer: weights still sum to exactly 10**6, the span part
of an attribution survives, no evidence falls back to the baseline, and the fake is
deterministic (the queue's tests rely on it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.influence import (
    INFLUENCE_METHOD,
    InfluenceResult,
    NoInfluenceIndex,
    RecordInfluence,
    UnknownAdapter,
)
from attribution.influence.fake import FakeInfluence, FakeScoringError
from attribution.influence.refine import refine_attribution
from attribution.weights import DENOMINATOR, WeightsError


def _span_attribution(spans: list[tuple[int, int, list[int]]]) -> dict:
    return {
        "object": "attribution",
        "version": "royalty-attribution/1",
        "methods": {"spans": "spans/x", "weights": "royalty-weights/1"},
        "method": "spans" if spans else "baseline",
        "adapter": "a1",
        "snapshot_id": "snap-1",
        "spans": [
            {"start": 0, "end": 1, "start_token": s, "end_token": e, "record_ids": rids}
            for s, e, rids in spans
        ],
        "top_records": [],
        "contributors": [],
    }


def _result(*pairs: tuple[int, float]) -> InfluenceResult:
    return InfluenceResult(INFLUENCE_METHOD, tuple(RecordInfluence(r, s) for r, s in pairs), 0.01)


RECORDS = {1: 10, 2: 10, 3: 20, 4: 30, 5: 40}
BASELINE = {10: 2, 20: 1, 30: 1, 40: 1}


def _ppm(att: dict) -> dict[int, int]:
    return {c["id"]: c["weight_ppm"] for c in att["contributors"]}


def test_influence_only_names_the_scored_contributors():
    att = refine_attribution(
        None,
        _result((3, 2.0), (4, 1.0), (5, -1.0)),
        RECORDS,
        BASELINE,
        adapter="a1",
        snapshot_id="snap-1",
    )
    assert att["method"] == "influence"
    # record 3 has 2/3 of the evidence, but the cap is 1/2: under royalty-weights/2 the excess
    # (1/6) goes to the contributors without evidence by their records (10 has 2, 40 has 1),
    # so contributor 30 keeps its own 1/3 and the order of the evidence holders stands
    assert _ppm(att) == {10: 111_111, 20: 500_000, 30: 333_333, 40: 55_556}
    assert att["methods"]["influence"] == INFLUENCE_METHOD
    assert [r["id"] for r in att["influence"]["records"]] == [3, 4, 5]
    assert att["influence"]["records"][0]["contributor"] == 20
    assert att["adapter"] == "a1" and att["snapshot_id"] == "snap-1"


def test_spans_and_influence_mix_and_keep_the_spans():
    span_att = _span_attribution([(0, 10, [1])])
    att = refine_attribution(span_att, _result((4, 1.0)), RECORDS, BASELINE)
    assert att["method"] == "spans+influence"
    assert att["spans"] == span_att["spans"]
    assert _ppm(att) == {10: 500_000, 30: 500_000}
    assert att["methods"]["spans"] == "spans/x"
    assert att["adapter"] == "a1"


def test_novel_text_without_positive_influence_is_the_baseline():
    att = refine_attribution(_span_attribution([]), _result((2, -0.5)), RECORDS, BASELINE)
    assert att["method"] == "baseline"
    assert sum(_ppm(att).values()) == DENOMINATOR
    assert _ppm(att) == {10: 400_000, 20: 200_000, 30: 200_000, 40: 200_000}
    att = refine_attribution(None, _result(), RECORDS, BASELINE)
    assert sum(_ppm(att).values()) == DENOMINATOR


def test_zero_influence_reproduces_the_span_weights():
    from attribution.weights import compute_weights

    spans = [(0, 7, [1, 3]), (9, 12, [4])]
    att = refine_attribution(_span_attribution(spans), _result(), RECORDS, BASELINE)

    class E:
        def __init__(self, length, rids):
            self.length, self.record_ids = length, rids

    w = compute_weights(
        spans=[E(e - s, r) for s, e, r in spans], record_contributors=RECORDS, baseline=BASELINE
    )
    assert _ppm(att) == dict(w.contributors)


def test_a_record_without_contributor_is_refused():
    with pytest.raises(WeightsError):
        refine_attribution(None, _result((99, 1.0)), RECORDS, BASELINE)
    with pytest.raises(WeightsError):
        refine_attribution({"spans": [{"record_ids": [1]}]}, _result(), RECORDS, BASELINE)


@settings(max_examples=200, deadline=None)
@given(
    spans=st.lists(
        st.tuples(
            st.integers(0, 50),
            st.integers(1, 30),
            st.lists(st.sampled_from(sorted(RECORDS)), min_size=1, max_size=3),
        ),
        max_size=5,
    ),
    scores=st.lists(
        st.tuples(
            st.sampled_from(sorted(RECORDS)),
            st.floats(-10, 10, allow_nan=False, allow_infinity=False),
        ),
        max_size=5,
        unique_by=lambda t: t[0],
    ),
)
def test_weights_always_sum_to_one_million(spans, scores):
    att = refine_attribution(
        _span_attribution([(s, s + n, rids) for s, n, rids in spans]),
        _result(*scores),
        RECORDS,
        BASELINE,
    )
    assert sum(_ppm(att).values()) == DENOMINATOR
    assert all(v > 0 for v in _ppm(att).values())
    assert set(_ppm(att)) <= set(BASELINE)
    assert sum(r["weight_ppm"] for r in att["top_records"]) <= DENOMINATOR


def test_fake_is_deterministic_and_names_only_its_records():
    fake = FakeInfluence({"a": range(1, 41)}, texts={7: "the planted canary"})
    with pytest.raises(UnknownAdapter):
        fake.score("a", "p", "o")
    with pytest.raises(NoInfluenceIndex):
        fake.register("b", Path("/nowhere"))
    fake.register("a", Path("/x"))
    assert fake.knows("a") and not fake.knows("b")
    one = fake.score("a", [{"role": "user", "content": "hi"}], "say the planted canary", top_k=5)
    two = fake.score("a", [{"role": "user", "content": "hi"}], "say the planted canary", top_k=5)
    assert one.records == two.records
    assert one.records[0].record_id == 7
    assert len(one.records) == 5
    assert all(r.score > 0 and 1 <= r.record_id <= 40 for r in one.records)
    assert [r.score for r in one.records] == sorted((r.score for r in one.records), reverse=True)
    other = fake.score("a", "p", "something else", top_k=40)
    assert other.records != one.records
    fake.forget("a")
    assert not fake.knows("a")


def test_fake_fails_on_request():
    fake = FakeInfluence({"a": [1, 2]}, fail_outputs={"boom"})
    fake.register("a", Path("/x"))
    fake.fail_next = 1
    with pytest.raises(FakeScoringError):
        fake.score("a", "p", "fine")
    fake.score("a", "p", "fine")
    with pytest.raises(FakeScoringError):
        fake.score("a", "p", "boom")
    assert len(fake.calls) == 3
