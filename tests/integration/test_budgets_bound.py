"""The budget estimate is an upper bound of what a request costs (issue 13, item 7), so
concurrent requests never overdraw an account by more than one request's reservation.

The requests are the ones a character count underestimates: tool schemas (which the chat
template renders into the prompt, with a space after every `,` and `:`), tool calls, names,
CJK and emoji text (3 and 4 bytes a character: a byte-level BPE may spend a token on each
byte), and n > 1. The engine reports usage as the worst byte-level tokenizer would: a token
per byte of everything the client controls, plus the template's own tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.gateway_harness import make_harness

from gateway.auth import KeyInfo
from gateway.errors import PaymentRequired
from gateway.inference import CallContext
from gateway.protocol.chat import ChatCompletionRequest
from metering.budgets.gate import BudgetGate
from metering.budgets.store import PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.book import PostgresLedger
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import InMemoryAdapterDirectory
from metering.pg import driver
from metering.pricing import PriceBook
from metering.usage.store import PostgresUsageStore

pytestmark = pytest.mark.integration

BASE = "royalty-tiny"
TOOL_PREAMBLE_TOKENS = 60
"""A template's text around the tool schemas ("# Tools ... <tools></tools>"), in tokens."""


def worst_case_prompt_tokens(req: dict[str, Any]) -> int:
    """A Qwen-style chat template under a tokenizer that spends one token per byte of
    everything the client sent: tools rendered by Jinja's `tojson` (", " and ": "), each turn
    as <|im_start|>role\\ncontent<|im_end|>\\n, then the generation prompt."""
    tokens = 1  # BOS
    if req.get("tools"):
        tokens += TOOL_PREAMBLE_TOKENS
        for tool in req["tools"]:
            tokens += len(json.dumps(tool, ensure_ascii=False).encode()) + 1
    for m in req["messages"]:
        tokens += 3 + len(m["role"].encode())
        content = m.get("content")
        if isinstance(content, str):
            tokens += len(content.encode())
        elif content:
            tokens += sum(len(str(p.get("text", "")).encode()) for p in content)
        if m.get("name"):
            tokens += len(m["name"].encode()) + 1
        for call in m.get("tool_calls") or ():
            tokens += len(json.dumps(call["function"], ensure_ascii=False).encode()) + 2
    return tokens + 3  # <|im_start|>assistant\n


def _schema(i: int) -> dict[str, Any]:
    props = {
        f"field_{k}": {"type": "string", "description": f"Parameter {k} of tool {i}", "enum": ["a", "b"]}
        for k in range(12)
    }  # fmt: skip
    return {"type": "function", "function": {"name": f"tool_{i}", "description": "Looks up",
            "parameters": {"type": "object", "properties": props, "required": list(props)}}}  # fmt: skip


CJK = "日本語の文章は一文字が三バイトです。"
EMOJI = "🙂🚀🌍✨"


def heavy_request(i: int) -> dict[str, Any]:
    kind = i % 4
    if kind == 0:  # tools-heavy: the schemas are most of the prompt
        return {"messages": [{"role": "user", "content": "Which tool?"}],
                "tools": [_schema(k) for k in range(4)], "max_tokens": 20}  # fmt: skip
    if kind == 1:  # non-ASCII: 3 bytes a character
        return {"messages": [{"role": "user", "content": CJK * 40}], "max_tokens": 20}
    if kind == 2:  # n > 1, emoji (4 bytes a character), names
        return {"messages": [{"role": "system", "content": EMOJI * 30, "name": "ボット"},
                             {"role": "user", "content": EMOJI * 60, "name": "利用者"}],
                "max_tokens": 40, "n": 4}  # fmt: skip
    args = json.dumps({"query": CJK * 10, "filters": [EMOJI] * 20}, ensure_ascii=False)
    return {"messages": [
        {"role": "user", "content": [{"type": "text", "text": CJK * 10}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "tool_1", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "c1", "content": EMOJI * 40},
    ], "tools": [_schema(1)], "max_tokens": 30, "n": 2}  # fmt: skip


class RecordingGate(BudgetGate):
    """The gate, noting what each request reserved."""

    reserved: dict[str, int]

    async def reserve(self, account_id: int, request_id: str, *args: Any, **kw: Any) -> int:
        amount = await super().reserve(account_id, request_id, *args, **kw)
        self.reserved[request_id] = amount
        return amount


async def test_concurrent_heavy_requests_never_overdraw_past_one_reservation(
    engine: AsyncEngine,
) -> None:
    credit = 60_000
    async with driver(engine) as conn:
        acct = int(await conn.fetchval("INSERT INTO accounts (name) VALUES ('b') RETURNING id"))
    await PostgresLedger(engine).top_up(acct, credit)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    await PostgresCatalog(engine).set_price(BASE, "", 1_000_000, 1_000_000, t0)  # 1 a token

    h = make_harness()
    fake = h.engine

    def usage_of(req: dict[str, Any]) -> tuple[int, int]:
        return worst_case_prompt_tokens(req), fake._n_tokens(req) * int(req.get("n") or 1)

    def complete(path: str, req: dict[str, Any]) -> dict[str, Any]:
        doc = type(fake)._complete(fake, path, req)
        prompt, completion = usage_of(req)
        doc["usage"] = fake._usage(prompt, completion)
        return doc

    fake._complete = complete  # type: ignore[method-assign]
    gate = RecordingGate(PostgresBudgets(engine), PostgresCatalog(engine), refresh_s=60)
    gate.reserved = {}
    svc = h.services.inference
    svc.budget = gate
    key = KeyInfo(key_id=1, account_id=acct, account="b", scopes=frozenset({"inference"}))
    bodies = {f"q{i:03d}": {**heavy_request(i), "model": BASE} for i in range(80)}

    async def one(rid: str) -> bool:
        req = msgspec.convert(bodies[rid], ChatCompletionRequest)
        try:
            await svc.complete(CallContext(rid, key, "chat.completions"), req)
        except PaymentRequired:
            return False
        return True

    served = await asyncio.gather(*(one(rid) for rid in bodies))
    await svc.drain()  # the settles run off the response path
    ok = {r.request_id: r for r in h.records if r.status == "ok"}
    assert len(ok) == sum(served)
    # each request cost no more than it reserved...
    for rid, rec in ok.items():
        cost = rec.prompt_tokens + rec.completion_tokens
        assert (rec.prompt_tokens, rec.completion_tokens) == usage_of(bodies[rid])
        assert cost <= gate.reserved[rid], (rid, cost, gate.reserved[rid], bodies[rid])
    # ...so together they never overdraw past one request's reservation (here: not at all)
    assert await PostgresBudgets(engine).available(acct) >= 0
    spent = sum(r.prompt_tokens + r.completion_tokens for r in ok.values())
    assert spent <= credit + max(gate.reserved.values())
    assert 0 < len(ok) < len(bodies)  # the credit ran out part way: the bound was tested
    # and posted through the ledger, the charges leave a balance that says the same
    await PostgresUsageStore(engine).insert_batch(h.records)
    await PostingWorker(engine, InMemoryAdapterDirectory()).drain()
    bal = await PostgresLedger(engine).balance("consumer", acct)
    assert (bal.balance, bal.held) == (credit - spent, 0)
    assert bal.balance >= 0
    assert await violations(engine) == []


class Book:
    def __init__(self, book: PriceBook) -> None:
        self._book = book

    async def book(self) -> PriceBook:
        return self._book


def test_the_context_length_caps_both_estimates() -> None:
    from metering.budgets.store import InMemoryBudgets
    from metering.pricing import Price

    book = PriceBook(
        [Price(1, BASE, "", 1_000_000, 2_000_000, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))]
    )
    capped = BudgetGate(InMemoryBudgets(), Book(book), default_max_tokens=4096, context_len=512)
    free = BudgetGate(InMemoryBudgets(), Book(book), default_max_tokens=4096)
    # a prompt can never pass the context; a choice never passes the context less a token
    assert capped.estimate(book, BASE, "", 10_000, 100, 2) == 512 + 2 * 2 * 100
    assert capped.estimate(book, BASE, "", 10_000, 5_000, 1) == 512 + 2 * 511
    # no max_tokens: the engine may generate to the end of its context, which is the bound
    assert capped.estimate(book, BASE, "", 100, None, 3) == 164 + 2 * 3 * 511
    assert free.estimate(book, BASE, "", 100, None, 3) == 164 + 2 * 3 * 4096
    assert free.estimate(book, BASE, "", 10_000, 100, 2) == 10_064 + 2 * 2 * 100
    with pytest.raises(ValueError):
        BudgetGate(InMemoryBudgets(), Book(book), context_len=1)
