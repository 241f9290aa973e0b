"""Span index and tracing: properties checked against a brute-force reference on small corpora,
plus building, reopening and failing builds."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attribution.spans import (
    SpanIndex,
    SpanIndexError,
    TraceParams,
    build_index,
    inputs_sha256,
)
from attribution.spans import index as index_module
from attribution.spans._load import LOAD_MODES, SPAN_INDEX_LOAD_ENV

Records = list[tuple[int, int, list[int]]]

# a small vocabulary so that random outputs share many spans with random records
tokens_st = st.lists(st.integers(0, 5), min_size=0, max_size=30)
records_st = st.lists(tokens_st, min_size=1, max_size=8).map(
    lambda toks: [(1000 + 7 * k, k % 3, t) for k, t in enumerate(toks)]
)


def _occurrences(records: Records, pattern: list[int]) -> list[tuple[int, int]]:
    """(record id, offset) of every occurrence, by brute force."""
    n = len(pattern)
    return [
        (rid, j)
        for rid, _, toks in records
        for j in range(len(toks) - n + 1)
        if toks[j : j + n] == pattern
    ]


def _reference(records: Records, output: list[int], params: TraceParams) -> list[tuple]:
    """Maximal spans kept by the rules in attribution/spans/trace.py, by brute force
    (ignoring the per-output cap)."""
    ends = []
    for i in range(len(output)):
        e = i
        while e < len(output) and _occurrences(records, output[i : e + 1]):
            e += 1
        ends.append(e)
    kept = []
    for i, e in enumerate(ends):
        if i > 0 and e <= ends[i - 1]:
            continue
        if e - i < params.min_tokens:
            continue
        occ = _occurrences(records, output[i:e])
        rids = sorted({rid for rid, _ in occ})
        if len(occ) > params.max_occurrences or len(rids) > params.max_records:
            continue
        kept.append((i, e, len(occ), tuple(rids)))
    return kept


def _build(records: Records, filter_m: int = 6) -> SpanIndex:
    directory = Path(tempfile.mkdtemp(prefix="spans-test-")) / "index"
    build_index(records, directory, filter_m=filter_m)
    return SpanIndex.open(directory)


UNCAPPED_RATE = 1000.0  # spans per output token: no cap


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=records_st,
    output=st.lists(st.integers(0, 6), max_size=40),
    min_tokens=st.integers(1, 4),
    max_records=st.integers(1, 3),
    filter_m=st.sampled_from([0, 1, 2, 3, 6]),  # the skip filter is used when <= min_tokens
)
def test_trace_equals_brute_force(records, output, min_tokens, max_records, filter_m):
    params = TraceParams(
        min_tokens=min_tokens, max_records=max_records, spans_per_token=UNCAPPED_RATE
    )
    index = _build(records, filter_m)
    got = [(s.start, s.end, s.occurrences, s.record_ids) for s in index.trace(output, params)]
    assert got == _reference(records, output, params)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_st, output=st.lists(st.integers(0, 6), max_size=40))
def test_spans_are_verbatim_maximal_and_name_only_indexed_records(records, output):
    index = _build(records, filter_m=1)
    by_id = {rid: (cid, toks) for rid, cid, toks in records}
    params = TraceParams(min_tokens=1, max_records=3, spans_per_token=UNCAPPED_RATE)
    for span in index.trace(output, params):
        piece = output[span.start : span.end]
        assert span.length == len(piece) >= 1
        assert len(span.record_ids) == len(span.contributor_ids) <= params.max_records
        for rid, cid in zip(span.record_ids, span.contributor_ids, strict=True):
            assert rid in by_id, "a span named a record outside the index"
            assert cid == by_id[rid][0]
            toks = by_id[rid][1]
            assert any(toks[j : j + len(piece)] == piece for j in range(len(toks)))
        # maximal: neither one more token on the left nor on the right occurs anywhere
        if span.start > 0:
            assert not _occurrences(records, output[span.start - 1 : span.end])
        if span.end < len(output):
            assert not _occurrences(records, output[span.start : span.end + 1])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_st, novel=st.lists(st.integers(6, 2**40), min_size=0, max_size=50))
def test_novel_tokens_yield_no_spans(records, novel):
    index = _build(records)
    assert index.trace(novel, TraceParams(min_tokens=1)) == []


def test_separator_and_unknown_ids_never_match():
    index = _build([(1, 1, [3, 4, 5]), (2, 1, [6, 7])])
    sep = index.header.separator
    assert index.trace([5, sep, 6], TraceParams(min_tokens=2)) == []
    assert index.trace([-1, 3, 4, 5, 2**62], TraceParams(min_tokens=3))[0].record_ids == (1,)
    with pytest.raises(ValueError):
        index.trace([[1, 2]])  # type: ignore[list-item]


def test_boilerplate_earns_nothing_but_its_rare_continuation_does():
    rng = np.random.default_rng(7)
    boiler = rng.integers(0, 1000, 20).tolist()
    records: Records = []
    for k in range(10):  # boilerplate opens 10 records, each then goes its own way
        records.append((k, k, boiler + rng.integers(1000, 5000, 30).tolist()))
    index = _build(records)
    params = TraceParams(min_tokens=5, max_records=3)
    assert index.trace(boiler, params) == []
    # the output copies the boilerplate and then record 4's own text: only that span counts
    output = records[4][2][:40]
    spans = index.trace(output, params)
    assert [(s.start, s.end, s.record_ids) for s in spans] == [(0, 40, (4,))]
    # a passage shared by exactly max_records records still counts, for all of them
    shared = rng.integers(6000, 7000, 12).tolist()
    index = _build([(k, 100 + k, [9000 + k, *shared, 9100 + k]) for k in range(3)])
    (span,) = index.trace(shared, params)
    assert span.record_ids == (0, 1, 2) and span.contributor_ids == (100, 101, 102)


def test_span_cap_keeps_the_least_probable_spans():
    rng = np.random.default_rng(3)
    records: Records = [(k, k, rng.integers(0, 50_000, 40).tolist()) for k in range(30)]
    index = _build(records)
    output: list[int] = []
    for k in range(30):  # 30 separate 10-token spans, with novel tokens in between
        output += records[k][2][:10] + [60_000 + k]
    params = TraceParams(min_tokens=5, spans_per_token=0.05)
    spans = index.trace(output, params)
    assert len(spans) == params.span_cap(len(output)) == 17
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    uncapped = index.trace(output, TraceParams(min_tokens=5, spans_per_token=UNCAPPED_RATE))
    assert len(uncapped) == 30
    assert set(spans) <= set(uncapped)


def test_uint32_tokens_and_empty_records():
    records: Records = [(1, 1, []), (2, 2, [70_000, 80_000, 90_000, 5]), (3, 3, [])]
    index = _build(records)
    assert index.header.token_dtype == "uint32"
    (span,) = index.trace([1, 70_000, 80_000, 90_000, 2], TraceParams(min_tokens=3))
    assert (span.start, span.end, span.record_ids) == (1, 4, (2,))


def test_reopen_is_memory_mapped_and_identical(tmp_path):
    records: Records = [(k, k % 2, list(range(k, k + 20))) for k in range(50)]
    target = tmp_path / "idx"
    header = build_index(records, target)
    assert header.inputs_sha256 == inputs_sha256(records)
    assert header.token_count == 1000 and header.record_count == 50
    index = SpanIndex.open(target)
    for name in ("tokens", "sa", "record_starts"):
        assert isinstance(np.load(target / f"{name}.npy", mmap_mode="r"), np.memmap)
        assert not getattr(index, name).flags.writeable
    # building the same inputs again is a no-op; other inputs are refused
    assert build_index(records, target) == header
    with pytest.raises(SpanIndexError, match="other inputs"):
        build_index([*records, (999, 0, [1, 2, 3])], target)
    with pytest.raises(SpanIndexError, match="twice"):
        build_index([(1, 1, [1]), (1, 1, [2])], tmp_path / "dup")
    with pytest.raises(SpanIndexError):
        build_index([(1, 1, [-3])], tmp_path / "neg")


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    real_save = index_module._save
    calls = []

    def crash_after_two(directory, name, array):
        calls.append(name)
        if len(calls) > 2:
            raise OSError("disk full")
        real_save(directory, name, array)

    monkeypatch.setattr(index_module, "_save", crash_after_two)
    with pytest.raises(OSError, match="disk full"):
        build_index([(1, 1, [1, 2, 3])], tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_foreign_index_is_refused(tmp_path):
    target = tmp_path / "idx"
    build_index([(1, 1, [1, 2, 3]), (2, 2, [4, 5])], target)
    header = json.loads((target / "header.json").read_text())
    (target / "header.json").write_text(json.dumps({**header, "format_version": 99}))
    with pytest.raises(SpanIndexError, match="format 99"):
        SpanIndex.open(target)
    (target / "header.json").write_text(json.dumps({**header, "token_count": 4}))
    with pytest.raises(SpanIndexError, match="shape"):
        SpanIndex.open(target)
    (target / "header.json").write_text("{")
    with pytest.raises(SpanIndexError):
        SpanIndex.open(target)
    with pytest.raises(SpanIndexError):
        SpanIndex.open(tmp_path / "missing")


def test_concurrent_builds_of_the_same_snapshot_agree(tmp_path):
    records: Records = [(k, k, list(range(k, k + 50))) for k in range(200)]
    target = tmp_path / "idx"
    results: list[object] = []

    def build() -> None:
        try:
            results.append(build_index(records, target))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == results[0] for r in results), results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    (span,) = SpanIndex.open(target).trace(records[10][2], TraceParams(min_tokens=50))
    assert span.record_ids == (10,)


def test_gram_filter_has_no_false_negatives_and_few_false_positives():
    from attribution.spans._search import _filter_may_contain

    rng = np.random.default_rng(11)
    records: Records = [(k, k, rng.integers(0, 300, 200).tolist()) for k in range(100)]
    index = _build(records, filter_m=4)
    mask = np.uint64((1 << index.header.filter_log2_bits) - 1)
    for _, _, toks in records:
        arr = np.asarray(toks, np.int64)
        for j in range(len(toks) - 3):
            assert _filter_may_contain(index.gram_filter, mask, arr, j, 4)
    novel = rng.integers(1000, 2000, 5000).astype(np.int64)  # no record holds these tokens
    false_positives = sum(
        _filter_may_contain(index.gram_filter, mask, novel, j, 4) for j in range(4996)
    )
    assert false_positives < 0.05 * 4996


def test_trace_is_the_same_with_and_without_the_gram_filter():
    rng = np.random.default_rng(5)
    records: Records = [(k, k % 7, rng.integers(0, 40, 300).tolist()) for k in range(200)]
    with_filter, without = _build(records, filter_m=6), _build(records, filter_m=0)
    assert without.gram_filter.size == 0 and with_filter.gram_filter.size > 0
    for _ in range(30):
        src = records[int(rng.integers(0, 200))][2]
        start = int(rng.integers(0, 250))
        output = [*src[start : start + 30], *rng.integers(0, 40, 60).tolist()]
        for min_tokens in (3, 6, 9):
            params = TraceParams(min_tokens=min_tokens, spans_per_token=UNCAPPED_RATE)
            assert with_filter.trace(output, params) == without.trace(output, params)


def test_empty_snapshots_and_outputs(tmp_path):
    snapshots: list[tuple[str, Records]] = [("none", []), ("blank", [(1, 1, []), (2, 2, [])])]
    for name, records in snapshots:
        build_index(records, tmp_path / name)
        index = SpanIndex.open(tmp_path / name)
        assert index.trace([1, 2, 3], TraceParams(min_tokens=1)) == []
    index = _build([(1, 1, [5, 6, 7])])
    assert index.trace([], TraceParams(min_tokens=1)) == []
    with pytest.raises(ValueError):
        TraceParams(min_tokens=0)
    with pytest.raises(ValueError):
        TraceParams(max_records=5, max_occurrences=4)


def _rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_load_modes_give_the_same_index_and_traces(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    records: Records = [(k, k % 5, rng.integers(0, 50, 300).tolist()) for k in range(40)]
    build_index(records, tmp_path / "idx")
    output = [*records[3][2][10:40], *rng.integers(0, 50, 30).tolist(), *records[9][2][:25]]
    params = TraceParams(min_tokens=3, spans_per_token=UNCAPPED_RATE)
    indexes = {mode: SpanIndex.open(tmp_path / "idx", load=mode) for mode in LOAD_MODES}
    want = indexes["map"].trace(output, params)
    assert want, "the output copies records: some spans are expected"
    for mode, index in indexes.items():
        assert index.load == mode
        assert index.trace(output, params) == want
        for name in ("tokens", "sa", "first_bounds", "record_starts", "gram_filter"):
            arr = getattr(index, name)
            assert not arr.flags.writeable, (mode, name)
            assert np.array_equal(arr, np.load(tmp_path / "idx" / f"{name}.npy")), (mode, name)
    # the default comes from the environment; nonsense is refused
    monkeypatch.setenv(SPAN_INDEX_LOAD_ENV, "ram")
    assert SpanIndex.open(tmp_path / "idx").load == "ram"
    monkeypatch.setenv(SPAN_INDEX_LOAD_ENV, "mlock-everything")
    with pytest.raises(ValueError, match="ROYALTY_SPAN_INDEX_LOAD"):
        SpanIndex.open(tmp_path / "idx")
    with pytest.raises(ValueError, match="load mode"):
        SpanIndex.open(tmp_path / "idx", load="eager")


def test_ram_load_copies_and_map_load_does_not(tmp_path):
    # 4M int32 suffix-array entries: 16 MiB, far above noise in RssAnon
    tokens = np.random.default_rng(1).integers(0, 1000, 4_000_000).tolist()
    build_index([(1, 1, tokens)], tmp_path / "idx", filter_m=0)
    before = _rss_anon_kib()
    mapped = SpanIndex.open(tmp_path / "idx", load="populate")
    assert int(mapped.sa[::1024].sum()) >= 0  # touched, yet file-backed: no anonymous growth
    assert _rss_anon_kib() - before < 8 * 1024
    copied = SpanIndex.open(tmp_path / "idx", load="ram")
    assert _rss_anon_kib() - before >= (copied.sa.nbytes + copied.tokens.nbytes) // 1024 * 0.9


def test_truncated_array_is_refused(tmp_path):
    target = tmp_path / "idx"
    build_index([(1, 1, list(range(100)))], target)
    sa = target / "sa.npy"
    sa.write_bytes(sa.read_bytes()[:-8])
    for mode in LOAD_MODES:
        with pytest.raises(SpanIndexError, match="sa.npy"):
            SpanIndex.open(target, load=mode)
