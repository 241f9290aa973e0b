"""`FakeInfluence`: a deterministic, in-memory `InfluenceScorer` for tests.

Each adapter is given its record ids (and optionally their texts) up front. Scores are a
keyed hash of (adapter, prompt, output, record id), so the same call always gives the same
answer; a record whose text occurs verbatim in the output scores far above the rest, like the
real scorer on a memorised record. Tests can make it fail (`fail_outputs`, `fail_next`) or slow
(`delay_s`) to exercise a job queue's retries and timeouts, and read `calls`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attribution.influence.api import (
    INFLUENCE_METHOD,
    InfluenceResult,
    NoInfluenceIndex,
    RecordInfluence,
    UnknownAdapter,
)


class FakeScoringError(RuntimeError):
    """Raised by `FakeInfluence.score` when a test asked it to fail."""


class FakeInfluence:
    def __init__(
        self,
        records: Mapping[str, Sequence[int]] | None = None,
        *,
        texts: Mapping[int, str] | None = None,
        fail_outputs: Iterable[str] = (),
        delay_s: float = 0.0,
        method: str = INFLUENCE_METHOD,
    ) -> None:
        """`records`: adapter name -> the record ids of its snapshot (what `register` will
        accept); `texts`: record id -> text, for the verbatim bonus; `fail_outputs`: outputs
        whose scoring raises `FakeScoringError`."""
        self._records = {a: tuple(int(r) for r in rs) for a, rs in (records or {}).items()}
        self._texts = dict(texts or {})
        self._fail_outputs = set(fail_outputs)
        self.delay_s = delay_s
        self.method = method
        self.fail_next = 0
        """Fail this many next `score` calls (then succeed)."""
        self.calls: list[tuple[str, Any, str]] = []
        self._registered: dict[str, Path] = {}
        self._lock = threading.Lock()

    def add_adapter(self, adapter: str, record_ids: Sequence[int]) -> None:
        with self._lock:
            self._records[adapter] = tuple(int(r) for r in record_ids)

    def register(self, adapter: str, adapter_dir: Path) -> None:
        with self._lock:
            if adapter not in self._records:
                raise NoInfluenceIndex(f"no influence index for {adapter} in {adapter_dir}")
            self._registered[adapter] = Path(adapter_dir)

    def forget(self, adapter: str) -> None:
        with self._lock:
            self._registered.pop(adapter, None)

    def knows(self, adapter: str) -> bool:
        with self._lock:
            return adapter in self._registered

    def score(
        self, adapter: str, prompt: str | list[Any], output: str, *, top_k: int = 32
    ) -> InfluenceResult:
        started = time.perf_counter()
        with self._lock:
            self.calls.append((adapter, prompt, output))
            if adapter not in self._registered:
                raise UnknownAdapter(adapter)
            records = self._records[adapter]
            if self.fail_next > 0:
                self.fail_next -= 1
                raise FakeScoringError(f"asked to fail ({adapter})")
        if output in self._fail_outputs:
            raise FakeScoringError(f"asked to fail on this output ({adapter})")
        if self.delay_s:
            time.sleep(self.delay_s)
        key = json.dumps([adapter, prompt, output], sort_keys=True).encode()
        scored: list[RecordInfluence] = []
        for rid in records:
            digest = hashlib.sha256(key + rid.to_bytes(8, "big", signed=True)).digest()
            score = int.from_bytes(digest[:4], "big") / 2**32 * 2 - 1  # [-1, 1)
            text = self._texts.get(rid)
            if text and output and text in output:
                score += 100.0
            if score > 0:
                scored.append(RecordInfluence(rid, score))
        scored.sort(key=lambda r: (-r.score, r.record_id))
        return InfluenceResult(
            method=self.method,
            records=tuple(scored[: max(top_k, 0)]),
            seconds=time.perf_counter() - started,
        )


__all__ = ["FakeInfluence", "FakeScoringError"]
