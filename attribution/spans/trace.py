"""Span tracing: the maximal verbatim spans of a response that occur in a snapshot's records,
in the spirit of AI2's OLMoTrace.

For every start i of the output, the longest prefix of `output[i:]` found in the index (see
`_search.longest_matches`) gives a candidate span [i, end_i). A span is *maximal* when no
other candidate contains it, i.e. `end_i > end_{i-1}` (ends never decrease). A maximal span is
kept when

- it is long enough: `length >= min_tokens`;
- it is rare: it occurs at most `max_occurrences` times in the index and in at most
  `max_records` distinct records. Boilerplate that many records share is therefore never
  credited, and neither is any part of it (a sub-span occurs at least as often);

and at most `max(min_spans, ceil(spans_per_token * len(output)))` spans are returned, chosen
by the lowest unigram log-probability of their tokens (long spans of rare tokens first, as
OLMoTrace ranks them; ties by earlier start), then listed by start offset. Each span names the
records it occurs in (ascending record id) and their contributors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from attribution.spans.index import SpanIndex


@dataclass(frozen=True)
class TraceParams:
    min_tokens: int = 6
    max_records: int = 4
    max_occurrences: int = 256
    spans_per_token: float = 0.05
    min_spans: int = 1

    def __post_init__(self) -> None:
        if self.min_tokens < 1:
            raise ValueError("min_tokens must be >= 1")
        if self.max_records < 1:
            raise ValueError("max_records must be >= 1")
        if self.max_occurrences < self.max_records:
            raise ValueError("max_occurrences must be >= max_records")
        if not (self.spans_per_token > 0 and math.isfinite(self.spans_per_token)):
            raise ValueError("spans_per_token must be a positive number")
        if self.min_spans < 0:
            raise ValueError("min_spans must be >= 0")

    def span_cap(self, output_length: int) -> int:
        return max(self.min_spans, math.ceil(self.spans_per_token * output_length))


@dataclass(frozen=True)
class Span:
    """output[start:end] occurs verbatim in each of `record_ids` (`occurrences` times in all);
    `contributor_ids[k]` contributed `record_ids[k]`."""

    start: int
    end: int
    occurrences: int
    record_ids: tuple[int, ...]
    contributor_ids: tuple[int, ...]

    @property
    def length(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "length": self.length,
            "occurrences": self.occurrences,
            "record_ids": list(self.record_ids),
            "contributor_ids": list(self.contributor_ids),
        }


def as_query(output_token_ids: Sequence[int]) -> np.ndarray[Any, np.dtype[np.int64]]:
    arr = np.asarray(output_token_ids)
    if arr.size == 0:
        return np.empty(0, np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("output token ids must be a flat sequence of integers")
    return arr.astype(np.int64, copy=False)


def trace(index: SpanIndex, output_token_ids: Sequence[int], params: TraceParams) -> list[Span]:
    query = as_query(output_token_ids)
    n = query.size
    if n == 0 or index.header.token_count == 0:
        return []
    ends, los, his = index.longest_matches(query, params.min_tokens)
    return spans_from_matches(index, query, ends, los, his, params)


def spans_from_matches(
    index: SpanIndex,
    query: np.ndarray[Any, np.dtype[np.int64]],
    ends: np.ndarray[Any, np.dtype[np.int64]],
    los: np.ndarray[Any, np.dtype[np.int64]],
    his: np.ndarray[Any, np.dtype[np.int64]],
    params: TraceParams,
) -> list[Span]:
    """The kept spans, given each start's longest match (end, suffix-array interval); starts
    shorter than `min_tokens` may report end == start."""
    n = query.size
    starts = np.arange(n)
    lengths = ends - starts
    maximal = np.empty(n, bool)
    maximal[0] = True
    np.greater(ends[1:], ends[:-1], out=maximal[1:])
    candidates = np.flatnonzero(
        maximal & (lengths >= params.min_tokens) & (his - los <= params.max_occurrences)
    )
    if candidates.size == 0:
        return []

    # unigram log-probability of each span, from the per-token counts the index keeps
    fb = index.first_bounds
    known = (query >= 0) & (query < fb.size - 1)
    safe = np.where(known, query, 0)
    counts = np.where(known, fb[safe + 1] - fb[safe], 1).astype(np.float64)
    logp = np.log(np.maximum(counts, 1.0) / index.header.token_count)
    prefix = np.concatenate(([0.0], np.cumsum(logp)))

    kept: list[tuple[float, int, Span]] = []
    for i in candidates.tolist():
        lo, hi = int(los[i]), int(his[i])
        positions = index.sa[lo:hi]
        rec = np.unique(np.searchsorted(index.record_starts, positions, side="right") - 1)
        if rec.size > params.max_records:
            continue
        rids = index.record_ids[rec]
        order = np.argsort(rids, kind="stable")
        span = Span(
            start=i,
            end=int(ends[i]),
            occurrences=hi - lo,
            record_ids=tuple(int(r) for r in rids[order]),
            contributor_ids=tuple(int(c) for c in index.contributor_ids[rec][order]),
        )
        kept.append((float(prefix[span.end] - prefix[span.start]), i, span))
    kept.sort(key=lambda item: (item[0], item[1]))
    chosen = [span for _, _, span in kept[: params.span_cap(n)]]
    chosen.sort(key=lambda s: s.start)
    return chosen


def warm_up(index: SpanIndex) -> None:
    """Compile (or load from numba's cache) the search kernel for this index's dtypes, so the
    first response does not pay for it."""
    index.longest_matches(np.zeros(2, np.int64), 2)
