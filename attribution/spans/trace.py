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

Imports go one way: `index` (the opened index, whose `SpanIndex.trace` calls `trace`) imports
this module; tracing sees an index only through `SearchableIndex`, what it reads of one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from attribution.spans._search import select_spans


class SearchableIndex(Protocol):
    """What tracing reads of an opened index (`attribution.spans.index.SpanIndex`): its length
    in tokens (separators excluded), its arrays, and the longest match of every output start."""

    sa: NDArray[Any]
    first_bounds: NDArray[Any]
    record_starts: NDArray[Any]
    record_ids: NDArray[Any]
    contributor_ids: NDArray[Any]

    def __len__(self) -> int: ...

    def longest_matches(
        self, query: NDArray[np.int64], min_tokens: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]: ...


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


TokenIds = Sequence[int] | np.ndarray[Any, np.dtype[np.integer[Any]]]


def as_query(output_token_ids: TokenIds) -> np.ndarray[Any, np.dtype[np.int64]]:
    arr = np.asarray(output_token_ids)
    if arr.size == 0:
        return np.empty(0, np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("output token ids must be a flat sequence of integers")
    return arr.astype(np.int64, copy=False)


def trace(index: SearchableIndex, output_token_ids: TokenIds, params: TraceParams) -> list[Span]:
    query = as_query(output_token_ids)
    n = query.size
    if n == 0 or len(index) == 0:
        return []
    ends, los, his = index.longest_matches(query, params.min_tokens)
    return spans_from_matches(index, query, ends, los, his, params)


def spans_from_matches(
    index: SearchableIndex,
    query: np.ndarray[Any, np.dtype[np.int64]],
    ends: np.ndarray[Any, np.dtype[np.int64]],
    los: np.ndarray[Any, np.dtype[np.int64]],
    his: np.ndarray[Any, np.dtype[np.int64]],
    params: TraceParams,
) -> list[Span]:
    """The kept spans, given each start's longest match (end, suffix-array interval); starts
    shorter than `min_tokens` may report end == start."""
    starts, span_ends, occurrences, counts, rids, cids = select_spans(
        query,
        ends,
        los,
        his,
        index.sa,
        index.first_bounds,
        index.record_starts,
        index.record_ids,
        index.contributor_ids,
        float(max(len(index), 1)),
        params.min_tokens,
        params.max_occurrences,
        params.max_records,
        params.span_cap(query.size),
    )
    rid_rows, cid_rows = rids.tolist(), cids.tolist()
    return [
        Span(
            start=start,
            end=end,
            occurrences=occ,
            record_ids=tuple(rid_rows[k][:count]),
            contributor_ids=tuple(cid_rows[k][:count]),
        )
        for k, (start, end, occ, count) in enumerate(
            zip(
                starts.tolist(),
                span_ends.tolist(),
                occurrences.tolist(),
                counts.tolist(),
                strict=True,
            )
        )
    ]


def warm_up(index: SearchableIndex) -> None:
    """Compile (or load from numba's cache) the search and selection kernels for this index's
    dtypes, so the first response does not pay for it (loading them from the cache alone
    takes milliseconds: the p99 of the first traces after an open)."""
    trace(index, np.zeros(2, np.int64), TraceParams(min_tokens=1))
