"""Gradient influence: which training records of an adapter helped produce a response.

`api` is the seam (the scorer protocol and its result types); `fake` is the in-memory double
for tests; `refine` merges an influence result into a response's span attribution. The real
scorer (`scorer`, `gradients`) needs torch and peft (the factory extras) and is imported
lazily by its users.
"""

from attribution.influence.api import (
    INFLUENCE_METHOD,
    READABLE_METHODS,
    InfluenceError,
    InfluenceResult,
    InfluenceScorer,
    NoInfluenceIndex,
    RecordInfluence,
    UnknownAdapter,
)

__all__ = [
    "INFLUENCE_METHOD",
    "InfluenceError",
    "InfluenceResult",
    "InfluenceScorer",
    "NoInfluenceIndex",
    "READABLE_METHODS",
    "RecordInfluence",
    "UnknownAdapter",
]
