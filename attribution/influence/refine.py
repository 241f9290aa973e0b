"""Refine a response's inline (span) attribution with its gradient influence result.

The gateway attaches a span attribution to every adapter response (`attribution.responses`);
later the influence worker scores the response and calls `refine_attribution`, which recomputes
the weights with formula `royalty-weights/2` (`attribution.weights.compute_weights`) from both
kinds of evidence and returns a new attribution object of the same shape, plus an `influence`
section and `methods.influence`.

Span evidence is read back from the attribution's `spans` (`start_token`, `end_token`,
`record_ids`): a span's length is its token count, exactly as at inline time, so a refinement
with no positive influence reproduces the inline weights. Contributors of every record named
(span or influence) come from `record_contributors` (the span attribution's `top_records`
only lists five); a named record without a contributor is an error (`WeightsError`), because
the scorer only names records of the adapter's snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attribution.influence.api import InfluenceResult
from attribution.weights import WEIGHTS_VERSION, WeightsError, compute_weights

ATTRIBUTION_VERSION = "royalty-attribution/1"  # same object as attribution.responses
TOP_RECORDS = 5
INFLUENCE_RECORDS = 10
"""How many of the influence result's records the `influence` section lists."""


@dataclass(frozen=True)
class _Span:
    length: int
    record_ids: tuple[int, ...]


def _spans_of(attribution: Mapping[str, Any] | None) -> list[_Span]:
    spans: list[_Span] = []
    for s in (attribution or {}).get("spans") or []:
        try:
            length = int(s["end_token"]) - int(s["start_token"])
            rids = tuple(int(r) for r in s["record_ids"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"malformed span in attribution: {s!r}") from e
        spans.append(_Span(length, rids))
    return spans


def refine_attribution(
    attribution: dict[str, Any] | None,
    result: InfluenceResult,
    record_contributors: Mapping[int, int],
    baseline: Mapping[int, int],
    *,
    adapter: str | None = None,
    snapshot_id: str | None = None,
) -> dict[str, Any]:
    """The attribution object of a response, from its span attribution (None when the gateway
    attached none) and its influence result. `record_contributors`: record id -> contributor
    id for (at least) every record either names; `baseline`: contributor id -> records in the
    adapter's snapshot. `adapter` / `snapshot_id` default to the span attribution's."""
    base = dict(attribution or {})
    spans = _spans_of(base)
    influence = {r.record_id: r.score for r in result.records}
    w = compute_weights(
        spans=spans,
        record_contributors=record_contributors,
        baseline=baseline,
        influence=influence,
    )
    top = sorted(w.records, key=lambda r: (-r[2], r[0]))[:TOP_RECORDS]
    named = sorted(result.records, key=lambda r: (-r.score, r.record_id))[:INFLUENCE_RECORDS]
    methods = dict(base.get("methods") or {})
    methods["weights"] = WEIGHTS_VERSION
    methods["influence"] = result.method
    return {
        "object": "attribution",
        "version": base.get("version", ATTRIBUTION_VERSION),
        "methods": methods,
        "method": w.method,
        "adapter": adapter if adapter is not None else base.get("adapter"),
        "snapshot_id": snapshot_id if snapshot_id is not None else base.get("snapshot_id"),
        "spans": list(base.get("spans") or []),
        "top_records": [
            {"id": rid, "contributor": cid, "weight": parts / w.denominator, "weight_ppm": parts}
            for rid, cid, parts in top
        ],
        "contributors": [
            {"id": cid, "weight": parts / w.denominator, "weight_ppm": parts}
            for cid, parts in w.contributors
        ],
        "influence": {
            "method": result.method,
            "seconds": result.seconds,
            "records": [
                {
                    "id": r.record_id,
                    "contributor": int(record_contributors[r.record_id])
                    if r.record_id in record_contributors
                    else None,
                    "score": r.score,
                }
                for r in named
            ],
        },
    }


__all__ = ["refine_attribution"]
