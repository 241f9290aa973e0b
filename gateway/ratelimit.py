"""Per-key rate limits: requests and tokens per minute, as token buckets.

Requests are counted on admission. Tokens are debited when the response's usage is known; a
key whose token bucket is empty is refused until it refills. `Retry-After` says when.
This limiter is per process; sharing limits across gateway processes is a separate backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    capacity: float
    level: float
    stamp: float

    def refill(self, rate_per_s: float, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * rate_per_s)
        self.stamp = now


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[int, _Bucket] = {}
        self._tokens: dict[int, _Bucket] = {}

    def _bucket(self, table: dict[int, _Bucket], key_id: int, limit: int, now: float) -> _Bucket:
        b = table.get(key_id)
        if b is None or b.capacity != limit:
            b = table[key_id] = _Bucket(float(limit), float(limit), now)
        b.refill(limit / 60.0, now)
        return b

    def admit(self, key_id: int, rpm: int, tpm: int) -> float | None:
        """Count one request; return None if admitted, else seconds until it would be."""
        now = self._clock()
        req = self._bucket(self._requests, key_id, rpm, now)
        tok = self._bucket(self._tokens, key_id, tpm, now)
        waits = []
        if req.level < 1.0:
            waits.append((1.0 - req.level) / (rpm / 60.0))
        if tok.level <= 0.0:
            waits.append((1.0 - tok.level) / (tpm / 60.0))
        if waits:
            return max(waits)
        req.level -= 1.0
        return None

    def debit_tokens(self, key_id: int, tpm: int, tokens: int) -> None:
        now = self._clock()
        self._bucket(self._tokens, key_id, tpm, now).level -= tokens

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))
