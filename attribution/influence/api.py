"""The seam between gradient influence (the scorer) and its asynchronous job queue.

The scorer (`attribution.influence.scorer`, built at adapter build time from per-record
projected LoRA gradients) answers: how much did each training record of this adapter help
produce this response? The queue worker (`royalty.workers.influence`) calls it for each
answered response, turns the result into refined weights and posts the ledger adjustment.
`FakeInfluence` (`attribution.influence.fake`) is the in-memory double for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class RecordInfluence:
    record_id: int
    score: float
    """Higher = the record helped more; only positive scores become weight."""


@dataclass(frozen=True, slots=True)
class InfluenceResult:
    method: str
    """Versioned method name, stored with the result (e.g. "royalty-influence/1")."""
    records: tuple[RecordInfluence, ...]
    """The top records by score, highest first."""
    seconds: float
    """CPU time the scoring took."""


class InfluenceScorer(Protocol):
    def register(self, adapter: str, adapter_dir: Path) -> None:
        """Load the adapter's precomputed gradient index (raises if it has none)."""
        ...

    def forget(self, adapter: str) -> None: ...

    def knows(self, adapter: str) -> bool: ...

    def score(
        self, adapter: str, prompt: str | list[Any], output: str, *, top_k: int = 32
    ) -> InfluenceResult:
        """`prompt` is a completions prompt or chat messages (dicts with role and content),
        exactly as the gateway received them; `output` is the response text."""
        ...


INFLUENCE_METHOD = "royalty-influence/3"
"""The method new indexes are built with (`gradients.InfluenceParams` holds its constants)."""
READABLE_METHODS = ("royalty-influence/1", "royalty-influence/2", "royalty-influence/3")
"""Index methods the scorer still opens: an older index (/1: smaller damping; /2: final weights
only, no checkpoint ensemble) keeps scoring as it was built, and its results say so, until
the adapter's next build writes a /3 index next to it."""


class InfluenceError(Exception):
    """Base of the scorer's errors."""


class NoInfluenceIndex(InfluenceError, FileNotFoundError):
    """`register`: the adapter directory holds no (usable) influence index."""


class UnknownAdapter(InfluenceError, KeyError):
    """`score` for an adapter that was never registered (or was forgotten)."""
