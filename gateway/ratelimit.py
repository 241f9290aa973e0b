"""Per-key rate limits: requests and tokens per minute.

Two limiters share one seam (`Limiter`):

- `RateLimiter`: token buckets in this process. Requests are counted on admission; tokens are
  debited when a response's usage is known, and a key whose token bucket is empty is refused
  until it refills. Right for one gateway process.
- `SharedRateLimiter`: one budget per key and clock minute shared by every gateway process,
  through a `CounterStore` (Postgres, or Redis when configured). A process does not ask the
  store per request: it *leases* a slice of the minute's budget (1/16 of it by default) with
  one atomic increment and admits locally until the slice is spent; once the store says the
  minute is spent, the process refuses the key locally until the next minute.

Bound on admission (requests; `N` = the key's rpm, `P` = gateway processes, `s` = slice):
  * within one clock minute at most `N` requests are admitted across all processes, exactly:
    the store's counter is incremented atomically and a lease is clipped to what is left;
  * over an arbitrary 60 s span at most `2N` (fixed windows: a burst at the end of one minute
    and one at the start of the next), as with any fixed-window limiter;
  * at least `N - P*s` are admitted in a busy minute: slices leased but unused by a process
    when the minute ends are lost (under-admission, never over-admission);
  * processes must agree on the clock (NTP); a skew of `d` seconds shifts a process's
    minute by `d`, the per-window count stays exact;
  * each process also keeps its own token buckets (`RateLimiter`) and admits only what both
    allow: one process alone behaves exactly like the per-process limiter (a burst of `N`,
    then `N/60` per second), and the buckets cap what one process takes at a minute's edge;
  * if the store is unreachable, the processes' own buckets decide alone, so up to `P*N` per
    minute until the store answers again (checked again every 5 s).
Tokens are debited after the response, so the requests in flight when a minute's token
budget runs out can overshoot it by their own size, as with the per-process limiter; a
process settles the tokens it used beyond its slice with its next lease.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

Kind = Literal["requests", "tokens"]
WINDOW_S = 60


class Limiter(Protocol):
    async def acquire(self, key_id: int, rpm: int, tpm: int) -> float | None:
        """Count one request; None if admitted, else seconds until it would be."""
        ...

    def debit_tokens(self, key_id: int, tpm: int, tokens: int) -> None:
        """Charge a finished response's tokens to the key (never blocks)."""
        ...


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


# --- one process -----------------------------------------------------------------------------
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

    async def acquire(self, key_id: int, rpm: int, tpm: int) -> float | None:
        return self.admit(key_id, rpm, tpm)

    def refund(self, key_id: int) -> None:
        """Give back a request admitted here that something else then refused."""
        b = self._requests.get(key_id)
        if b is not None:
            b.level = min(b.capacity, b.level + 1.0)

    def debit_tokens(self, key_id: int, tpm: int, tokens: int) -> None:
        now = self._clock()
        self._bucket(self._tokens, key_id, tpm, now).level -= tokens

    retry_after_header = staticmethod(retry_after_header)


# --- shared between processes ----------------------------------------------------------------
class CounterStoreError(Exception):
    """The shared counters cannot be reached."""


class CounterStore(Protocol):
    async def add(self, key_id: int, kind: Kind, window: int, amount: int) -> int:
        """Atomically add `amount` to the key's counter for `window`; return the new value."""
        ...

    async def sweep(self, before_window: int) -> None:
        """Forget windows older than `before_window`."""
        ...


def granted(new_total: int, ask: int, limit: int) -> int:
    """How much of `ask` fits, given the counter after adding `debt + ask` to it.

    The counter may pass the limit (an ask is added whole): anything at or above the limit
    means spent, so the overshoot costs nobody anything."""
    before_ask = new_total - ask  # the counter with this process's debt settled
    return max(0, min(ask, limit - before_ask))


@dataclass(slots=True)
class _Lease:
    window: int = -1
    balance: int = 0
    """Units leased and not yet used; negative: tokens used beyond the lease (a debt)."""
    spent: bool = False
    """The store said this window's budget is gone: refuse locally until the next one."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def roll(self, window: int) -> None:
        # A new minute: what is left of the last one's lease is lost (never carried over,
        # which would admit more than the minute's budget); unsettled token debt too.
        if window != self.window:
            self.window, self.spent, self.balance = window, False, 0


class SharedRateLimiter:
    """Fixed one-minute windows whose counters live in a `CounterStore`, leased in slices."""

    def __init__(
        self,
        store: CounterStore,
        *,
        slices_per_window: int = 16,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 1.0,
        retry_store_after_s: float = 5.0,
    ) -> None:
        if slices_per_window < 1:
            raise ValueError("slices_per_window must be at least 1")
        self.store = store
        self.slices_per_window = slices_per_window
        self._clock = clock
        self._timeout_s = timeout_s
        self._retry_store_after_s = retry_store_after_s
        self._leases: dict[tuple[int, Kind], _Lease] = {}
        self._local = RateLimiter(clock)
        self._store_down_until = 0.0
        self._swept = -1
        self._background: set[asyncio.Task[None]] = set()
        self.store_calls = 0
        """Round trips to the store (the point of leasing is that this stays small)."""

    def slice_of(self, limit: int) -> int:
        return max(1, math.ceil(limit / self.slices_per_window))

    def _lease(self, key_id: int, kind: Kind, window: int) -> _Lease:
        lease = self._leases.get((key_id, kind))
        if lease is None:
            lease = self._leases[(key_id, kind)] = _Lease()
        lease.roll(window)
        return lease

    async def acquire(self, key_id: int, rpm: int, tpm: int) -> float | None:
        now = self._clock()
        # This process's own buckets first (no round trip): what they refuse, the shared
        # budget is never asked for; what they admit is given back if the shared one refuses.
        local_wait = self._local.admit(key_id, rpm, tpm)
        if local_wait is not None or now < self._store_down_until:
            return local_wait
        window = int(now // WINDOW_S)
        self._sweep_later(window)
        next_window_in = (window + 1) * WINDOW_S - now
        try:
            tok = self._lease(key_id, "tokens", window)
            if tok.balance <= 0 and not await self._refill(key_id, "tokens", tpm, window):
                self._local.refund(key_id)
                return next_window_in
            req = self._lease(key_id, "requests", window)
            if req.balance < 1 and not await self._refill(key_id, "requests", rpm, window):
                self._local.refund(key_id)
                return next_window_in
        except CounterStoreError as e:
            log.warning("shared rate limits unavailable (%s); limiting per process for %.0fs",
                        e, self._retry_store_after_s)  # fmt: skip
            self._store_down_until = now + self._retry_store_after_s
            return None  # the process's own buckets admitted it
        req.balance -= 1
        return None

    async def _refill(self, key_id: int, kind: Kind, limit: int, window: int) -> bool:
        """Lease another slice unless the window is spent; True if units are available.
        One lease at a time per key and kind: concurrent requests wait for it."""
        lease = self._lease(key_id, kind, window)
        async with lease.lock:
            lease.roll(window)
            if lease.balance > 0:
                return True  # another request's lease arrived while this one waited
            if lease.spent:
                return False
            debt = -lease.balance
            ask = self.slice_of(limit)
            self.store_calls += 1
            try:
                async with asyncio.timeout(self._timeout_s):
                    total = await self.store.add(key_id, kind, window, debt + ask)
            except CounterStoreError:
                raise
            except (TimeoutError, OSError) as e:
                raise CounterStoreError(f"{e.__class__.__name__}: {e}") from e
            if lease.window != window:
                return False  # the minute ended while we asked; the next request re-leases
            got = granted(total, ask, limit)
            lease.balance = got
            lease.spent = got == 0
            return got > 0

    def debit_tokens(self, key_id: int, tpm: int, tokens: int) -> None:
        now = self._clock()
        self._local.debit_tokens(key_id, tpm, tokens)
        # Charged to the minute the response ended in; settled with the next lease.
        self._lease(key_id, "tokens", int(now // WINDOW_S)).balance -= tokens

    def _sweep_later(self, window: int) -> None:
        if window <= self._swept:
            return
        self._swept = window
        task = asyncio.ensure_future(self._sweep(window - 2))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sweep(self, before: int) -> None:
        try:
            await self.store.sweep(before)
        except Exception as e:  # housekeeping: the next minute tries again
            log.debug("could not sweep old rate-limit windows: %s", e)

    retry_after_header = staticmethod(retry_after_header)


# --- stores ---------------------------------------------------------------------------------
# Table `rate_limit_windows` (migration 0006). One statement: the row of the key's minute is
# created or incremented atomically (row lock on conflict), and the new total comes back.
ADD_TO_WINDOW = text(
    """
    INSERT INTO rate_limit_windows AS w (key_id, kind, window_start, used)
    VALUES (:key_id, :kind, :window, :amount)
    ON CONFLICT (key_id, kind, window_start) DO UPDATE SET used = w.used + EXCLUDED.used
    RETURNING w.used
    """
)
SWEEP_WINDOWS = text("DELETE FROM rate_limit_windows WHERE window_start < :before")


class PostgresCounters:
    def __init__(self, db: AsyncEngine) -> None:
        self.db = db

    async def add(self, key_id: int, kind: Kind, window: int, amount: int) -> int:
        params = {"key_id": key_id, "kind": kind, "window": window, "amount": amount}
        try:
            async with self.db.begin() as conn:
                return int((await conn.execute(ADD_TO_WINDOW, params)).scalar_one())
        except (SQLAlchemyError, OSError) as e:
            raise CounterStoreError(str(e)) from e

    async def sweep(self, before_window: int) -> None:
        async with self.db.begin() as conn:
            await conn.execute(SWEEP_WINDOWS, {"before": before_window})


class RedisCounters:
    """INCRBY on one key per key, kind and minute; keys expire on their own."""

    def __init__(self, redis: Redis, *, prefix: str = "royalty:rl") -> None:
        self.redis = redis
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str) -> RedisCounters:
        from redis.asyncio import Redis

        return cls(Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0))

    async def add(self, key_id: int, kind: Kind, window: int, amount: int) -> int:
        from redis.exceptions import RedisError

        name = f"{self.prefix}:{key_id}:{kind}:{window}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incrby(name, amount)
                pipe.expire(name, 3 * WINDOW_S)
                total, _ = await pipe.execute()
        except RedisError as e:
            raise CounterStoreError(str(e)) from e
        return int(total)

    async def sweep(self, before_window: int) -> None:
        return None  # keys expire

    async def close(self) -> None:
        await self.redis.aclose()


class InMemoryCounters:
    """The store for tests: one dict, shared by several limiters as by several processes."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, str, int], int] = {}
        self.down = False

    async def add(self, key_id: int, kind: Kind, window: int, amount: int) -> int:
        if self.down:
            raise CounterStoreError("store is down")
        k = (key_id, kind, window)
        self.counts[k] = self.counts.get(k, 0) + amount
        return self.counts[k]

    async def sweep(self, before_window: int) -> None:
        for k in [k for k in self.counts if k[2] < before_window]:
            del self.counts[k]
