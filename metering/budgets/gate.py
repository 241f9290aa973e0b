"""The gateway's use of budgets: before serving, reserve the most a request can cost; after
its usage record is written, settle the reservation to the actual cost.

The estimate is an upper bound of the request's cost, so that concurrent requests can overdraw
an account by at most one request's reservation:
- input: `prompt_bytes + overhead` tokens, where `prompt_bytes` bounds the bytes of the
  prompt as the engine renders it: the byte length of the body the gateway sends to the
  engine, with the tool schemas counted once more (chat templates re-render them with a space
  after every `,` and `:`, at most doubling them). Everything the prompt is made of travels
  in that body (messages, names, tool calls, `tools`, `response_format`, token ids as digits)
  and a byte-level BPE token is at least one byte, so bytes bound tokens in every script (a
  CJK character is 3 bytes and may be 3 tokens; counting characters undercounts it).
  `overhead` covers the chat template's own text. Where the engine's context length is known
  it caps the input too (the engine refuses a longer prompt): the one bound that holds
  whatever a template does (e.g. one that indents tool schemas);
- output: `max_tokens × n` tokens, each choice capped at `context_len - 1` where known (the
  prompt takes at least one token). A request that names no `max_tokens` may generate up to
  the engine's context: `context_len - 1` per choice where known, else `default_max_tokens`
  (a bound only if the engine stops there: give the gate `context_len`).
Settling replaces the estimate with the actual charge; the posting worker removes the hold
when it debits the charge, in the same transaction.

When Postgres cannot be reached the gate lets requests through (`fail_open`, the default):
serving and durable usage capture keep working through a database outage (DESIGN.md,
invariant 1), and the usage is charged when it posts. Set `fail_open=False` to refuse instead.

Cost per request: a request that holds nothing (an unpriced model, a free estimate, or budgets
not checked during an outage) costs no round trip at all; the gate remembers which requests
may hold credit and settles only those. Reservations and settles of concurrent requests are
grouped into one statement each (`Budgets.reserve_many`, `Budgets.settle_many`), like a group
commit: while one batch is being written the next one gathers. A grouped reservation is
guarded on the locked account row exactly like a single one (the held total never passes the
balance); a request that did not fit in its group is asked alone. Settling only ever lowers
a hold (the estimate bounds the cost), so grouping it delays nothing that protects an account.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import asyncpg
from sqlalchemy.exc import SQLAlchemyError

from metering.budgets.store import Budgets, InsufficientCredit
from metering.pricing import PriceBook, charge_micros

log = logging.getLogger(__name__)

__all__ = ["BudgetGate", "BudgetUnavailable", "InsufficientCredit", "PriceSource"]

# What "the database cannot answer now" looks like: asyncpg's own errors once connected, and
# SQLAlchemy's wrappers of them when the pool cannot connect (e.g. too many clients).
_DB_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    SQLAlchemyError,
)

T = TypeVar("T")
R = TypeVar("R")


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
        context_len: int | None = None,
    ) -> None:
        if context_len is not None and context_len < 2:
            raise ValueError("a context holds at least one prompt and one output token")
        self.budgets = budgets
        self.prices = prices
        self.default_max_tokens = default_max_tokens
        self.overhead = prompt_overhead_tokens
        self.context_len = context_len
        """The engine's context length (`max_model_len`), where known: caps both estimates."""
        self.refresh_s = refresh_s
        self.fail_open = fail_open
        self._book: PriceBook | None = None
        self._loaded = 0.0
        self._lock = asyncio.Lock()
        self.unchecked = 0
        """Requests let through because budgets could not be checked."""
        self._holding: set[str] = set()
        """Request ids whose reservation this gate made and has not settled yet."""
        self._reserves: _Grouped[tuple[int, str, int], bool] = _Grouped(self._write_reserves)
        self._settles: _Grouped[tuple[str, int], None] = _Grouped(self._write_settles)

    @property
    def reserve_batches(self) -> int:
        """Grouped reservation statements (at most one per request, fewer under load)."""
        return self._reserves.batches

    @property
    def settle_batches(self) -> int:
        """Grouped settle statements (at most one per request, fewer under load)."""
        return self._settles.batches

    def holds(self, request_id: str) -> bool:
        """Whether `settle` has anything to do for this request (callers can skip it)."""
        return request_id in self._holding

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
        prompt_bytes: int,
        max_tokens: int | None,
        n: int,
    ) -> int:
        """The most the request can cost (see the module's docstring for why it bounds)."""
        price = book.price(base_model, adapter, dt.datetime.now(dt.UTC))
        prompt = prompt_bytes + self.overhead
        per_choice = max_tokens or self.default_max_tokens
        if self.context_len is not None:
            prompt = min(prompt, self.context_len)
            per_choice = min(max_tokens or self.context_len, self.context_len - 1)
        return charge_micros(price, prompt, per_choice * max(n, 1))

    async def reserve(
        self, account_id: int, request_id: str, base_model: str, adapter: str,
        prompt_bytes: int, max_tokens: int | None, n: int = 1,
    ) -> int:  # fmt: skip
        """Hold the estimate; InsufficientCredit when the account cannot cover it.
        `prompt_bytes`: the byte length of the request body sent to the engine."""
        try:
            book = await self._current_book()
            amount = self.estimate(book, base_model, adapter, prompt_bytes, max_tokens, n)
            if amount <= 0:  # a free request holds nothing (Postgres is not even asked)
                await self.budgets.reserve(account_id, request_id, amount)
                return amount
            # Noted before asking: a request cancelled while its reservation is being written
            # may hold credit, so its settle must run.
            self._holding.add(request_id)
            try:
                # Grouped with concurrent requests; what did not fit in the group (or a failed
                # group) is asked alone, which decides exactly and names what is available.
                if not await self._reserves.submit((account_id, request_id, amount)):
                    await self.budgets.reserve(account_id, request_id, amount)
            except InsufficientCredit:
                self._holding.discard(request_id)
                raise
            return amount
        except InsufficientCredit:
            raise
        except _DB_DOWN as e:
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
        if request_id not in self._holding:
            return  # it holds nothing: no reservation row to settle
        self._holding.discard(request_id)
        try:
            book = await self._current_book()
            price = book.price(base_model, adapter, started_at)
            actual = charge_micros(price, prompt_tokens, completion_tokens) if charged else 0
            await self._settles.submit((request_id, actual))
        except _DB_DOWN as e:
            # The hold stays until the event posts, which removes it: safe, only conservative.
            log.warning("could not settle the budget of %s: %s", request_id, e)

    async def _write_reserves(self, batch: list[tuple[int, str, int]]) -> list[bool]:
        many = getattr(self.budgets, "reserve_many", None)
        if many is None or len(batch) == 1:
            return [False] * len(batch)  # each is asked alone
        try:
            held = await many(batch)
        except _DB_DOWN as e:
            log.debug("grouped reservation failed (%s); reserving one by one", e)
            return [False] * len(batch)
        return [rid in held for _, rid, _ in batch]

    async def _write_settles(self, batch: list[tuple[str, int]]) -> list[None]:
        many = getattr(self.budgets, "settle_many", None)
        if many is not None:
            await many(batch)
        else:
            for rid, actual in batch:
                await self.budgets.settle(rid, actual)
        return [None] * len(batch)


class _Grouped(Generic[T, R]):
    """Group commit for round trips: the first item starts a write at once; items that come
    while it is in flight wait and go together in the next one. `submit` returns the item's
    own answer once its write is done, or raises the write's error."""

    def __init__(self, write: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._write = write
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0

    async def submit(self, item: T) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._run())
        return await done

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                self.batches += 1
                try:
                    answers = await self._write([item for item, _ in batch])
                except Exception as e:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(e)
                else:
                    for (_, f), answer in zip(batch, answers, strict=True):
                        if not f.done():
                            f.set_result(answer)
                batch = []
        except BaseException:  # the writer was cancelled (shutdown): nobody may wait forever
            for _, f in [*batch, *self._waiting]:
                if not f.done():
                    f.cancel()
            self._waiting = []
            raise
        finally:
            self._writer = None
