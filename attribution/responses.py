"""Per-response attribution, inline: which of the adapter's training records a response drew on.

At adapter build, `build_adapter_index` tokenises the snapshot's training documents with the
base model's tokenizer and builds the span index (`attribution.spans`) next to the adapter.
At the end of every response through an adapter, `ResponseAttributor.attribute` tokenises
the output the same way, traces its maximal rare verbatim spans in that index, and turns the
evidence into weights with formula `royalty-weights/2` (`attribution.weights`): per
contributor and per record, integers in parts per million that sum to exactly 10**6, with the
snapshot baseline when no span qualifies. Only records of the adapter's own snapshot can be
named: the index holds nothing else.

The result (an `attribution` object) travels with the response and with its usage record;
no prompt or output text is kept, only offsets, ids and weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attribution.spans import SpanIndex, TraceParams, build_index, inputs_sha256, trace, warm_up
from attribution.spans.index import FORMAT_VERSION as INDEX_FORMAT
from attribution.weights import WEIGHTS_VERSION, compute_weights

log = logging.getLogger(__name__)

ATTRIBUTION_VERSION = "royalty-attribution/1"
SPANS_METHOD = f"spans/royalty-span-index-{INDEX_FORMAT}"
TOP_RECORDS = 5


def _tokenizer(path: str | os.PathLike[str]) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def build_adapter_index(
    parent: Path,
    documents: Iterable[tuple[int, int, str]],
    tokenizer_json: Path,
) -> Path:
    """The span index of an adapter's training documents (record id, contributor account id,
    document text; snapshot order) under `parent`, in a directory named by the digest of its
    inputs (record and account ids belong to one database; the adapter's files may serve
    several); built once, atomically. Returns its directory."""
    tok = _tokenizer(tokenizer_json)
    docs = list(documents)
    encodings = tok.encode_batch([text for _, _, text in docs], add_special_tokens=False)
    records = [(rid, cid, enc.ids) for (rid, cid, _), enc in zip(docs, encodings, strict=True)]
    target = parent / f"spans-{inputs_sha256(records)[:16]}"
    build_index(records, target)
    return target


@dataclass(frozen=True)
class AdapterEvidence:
    adapter: str
    snapshot_id: str
    baseline: Mapping[int, int]
    """contributor account id -> records in the snapshot"""
    index: SpanIndex | None


class ResponseAttributor:
    """Attribution for responses of the adapters registered with it (one per gateway)."""

    def __init__(self, tokenizer_json: Path, params: TraceParams | None = None) -> None:
        self._tok = _tokenizer(tokenizer_json)
        self.params = params or TraceParams()
        self._adapters: dict[str, AdapterEvidence] = {}

    def register(
        self, adapter: str, snapshot_id: str, baseline: Mapping[int, int], index_dir: Path | None
    ) -> None:
        index = None
        if index_dir is not None and index_dir.is_dir():
            try:
                index = SpanIndex.open(index_dir)
                warm_up(index)
            except Exception as e:  # a broken index: baseline weights, loudly
                log.warning("span index of %s unusable (%s); baseline attribution only", adapter, e)
        self._adapters[adapter] = AdapterEvidence(adapter, snapshot_id, dict(baseline), index)

    def forget(self, adapter: str) -> None:
        self._adapters.pop(adapter, None)

    def knows(self, adapter: str) -> bool:
        return adapter in self._adapters

    def attribute(self, adapter: str, output_text: str) -> dict[str, Any] | None:
        """The `attribution` object of a response of `adapter`; None for an adapter this
        attributor does not know (e.g. a base-model request)."""
        ev = self._adapters.get(adapter)
        if ev is None or not ev.baseline:
            return None
        spans: list[Any] = []
        offsets: list[tuple[int, int]] = []
        if ev.index is not None and output_text:
            enc = self._tok.encode(output_text, add_special_tokens=False)
            offsets = enc.offsets
            spans = trace(ev.index, enc.ids, self.params)
        record_contributors = {
            r: c for s in spans for r, c in zip(s.record_ids, s.contributor_ids, strict=True)
        }
        w = compute_weights(
            spans=spans, record_contributors=record_contributors, baseline=ev.baseline
        )
        top = sorted(w.records, key=lambda r: (-r[2], r[0]))[:TOP_RECORDS]
        return {
            "object": "attribution",
            "version": ATTRIBUTION_VERSION,
            "methods": {"spans": SPANS_METHOD, "weights": WEIGHTS_VERSION},
            "method": w.method,
            "adapter": adapter,
            "snapshot_id": ev.snapshot_id,
            "spans": [
                {
                    "start": offsets[s.start][0],
                    "end": offsets[s.end - 1][1],
                    "start_token": s.start,
                    "end_token": s.end,
                    "record_ids": list(s.record_ids),
                }
                for s in spans
            ],
            "top_records": [
                {"id": rid, "contributor": cid, "weight": parts / w.denominator}
                for rid, cid, parts in top
            ],
            "contributors": [
                {"id": cid, "weight": parts / w.denominator, "weight_ppm": parts}
                for cid, parts in w.contributors
            ],
        }


__all__ = [
    "ATTRIBUTION_VERSION",
    "AdapterEvidence",
    "ResponseAttributor",
    "build_adapter_index",
]
