"""Span tracing over a snapshot's records: a memory-mapped suffix-array index (`index`) and the
search for maximal, rare verbatim spans of a response (`trace`). See docs/attribution.md."""

from attribution.spans.index import (
    FORMAT_VERSION,
    IndexHeader,
    SpanIndex,
    SpanIndexError,
    build_index,
    inputs_sha256,
)
from attribution.spans.trace import Span, TraceParams, trace, warm_up

__all__ = [
    "FORMAT_VERSION",
    "IndexHeader",
    "Span",
    "SpanIndex",
    "SpanIndexError",
    "TraceParams",
    "build_index",
    "inputs_sha256",
    "trace",
    "warm_up",
]
