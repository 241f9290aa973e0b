"""The gateway's use of budgets: before serving, reserve the most a request can cost; after
its usage record is written, settle the reservation to the actual cost.

The estimate prices `prompt_chars + overhead` input tokens (a byte-level BPE token is at least
one byte, so characters bound tokens for ASCII text; `overhead` covers chat templates) and
`max_tokens × n` output tokens (`default_max_tokens` when the request names none). Settling
replaces it with the actual charge; the posting worker removes the hold when it debits the
charge, in the same transaction.

When Postgres cannot be reached the gate lets requests through (`fail_open`, the default):
serving and durable usage capture keep working through a database outage (DESIGN.md,
invariant 1), and the usage is charged when it posts. Set `fail_open=False` to refuse instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Protocol

import asyncpg

from metering.budgets import Budgets, InsufficientCredit
from metering.pricing import PriceBook, charge_micros

log = logging.getLogger(__name__)

__all__ = ["BudgetGate", "BudgetUnavailable", "InsufficientCredit", "PriceSource"]


class PriceSource(Protocol):
    async def book(self) -> PriceBook: ...


class BudgetUnavailable(Exception):
    """Budgets cannot be checked now and the gate is configured to fail closed."""


class BudgetGate:
    def __init__(
        self,
        budgets: Budgets,
        prices: PriceSource,
        *,
        default_max_tokens: int = 4096,
        prompt_overhead_tokens: int = 64,
        refresh_s: float = 10.0,
        fail_open: bool = True,
    ) -> None:
        self.budgets = budgets
        self.prices = prices
        self.default_max_tokens = default_max_tokens
        self.overhead = prompt_overhead_tokens
        self.refresh_s = refresh_s
        self.fail_open = fail_open
        self._book: PriceBook | None = None
        self._loaded = 0.0
        self._lock = asyncio.Lock()
        self.unchecked = 0
        """Requests let through because budgets could not be checked."""

    async def _current_book(self) -> PriceBook:
        if self._book is None or time.monotonic() - self._loaded > self.refresh_s:
            async with self._lock:
                if self._book is None or time.monotonic() - self._loaded > self.refresh_s:
                    self._book = await self.prices.book()
                    self._loaded = time.monotonic()
        return self._book

    def estimate(
        self,
        book: PriceBook,
        base_model: str,
        adapter: str,
        prompt_chars: int,
        max_tokens: int | None,
        n: int,
    ) -> int:
        price = book.price(base_model, adapter, dt.datetime.now(dt.UTC))
        output = (max_tokens or self.default_max_tokens) * max(n, 1)
        return charge_micros(price, prompt_chars + self.overhead, output)

    async def reserve(
        self, account_id: int, request_id: str, base_model: str, adapter: str,
        prompt_chars: int, max_tokens: int | None, n: int = 1,
    ) -> int:  # fmt: skip
        """Hold the estimate; InsufficientCredit when the account cannot cover it."""
        try:
            book = await self._current_book()
            amount = self.estimate(book, base_model, adapter, prompt_chars, max_tokens, n)
            await self.budgets.reserve(account_id, request_id, amount)
            return amount
        except InsufficientCredit:
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            if not self.fail_open:
                raise BudgetUnavailable(str(e)) from e
            self.unchecked += 1
            log.warning("budget not checked for %s (%s); serving anyway", request_id, e)
            return 0

    async def settle(
        self, request_id: str, base_model: str, adapter: str, started_at: dt.datetime,
        prompt_tokens: int, completion_tokens: int, charged: bool,
    ) -> None:  # fmt: skip
        """Replace the hold by the actual cost (0 for a request that is not charged)."""
        try:
            book = await self._current_book()
            price = book.price(base_model, adapter, started_at)
            actual = charge_micros(price, prompt_tokens, completion_tokens) if charged else 0
            await self.budgets.settle(request_id, actual)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            # The hold stays until the event posts, which removes it: safe, only conservative.
            log.warning("could not settle the budget of %s: %s", request_id, e)
