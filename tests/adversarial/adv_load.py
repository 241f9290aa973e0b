"""Concurrent client load through real clients: streams read raw with httpx (a stream is whole
only if it ended with `data: [DONE]`; the OpenAI SDK hides that line), non-streaming requests
through the official OpenAI SDK. Every request becomes an `Outcome` in a `Tally`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass

import httpx
import openai
from adv_checks import Outcome, Tally, error_shape_ok

PROMPTS = {
    "recipes": "Recipe:",
    "astronomy": "The planet",
    "legal": "The tenant shall",
}


@dataclass(frozen=True)
class Client:
    account: str
    key: str


async def stream_once(
    http: httpx.AsyncClient, client: Client, model: str, max_tokens: int, tally: Tally
) -> Outcome:
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": PROMPTS.get(model, "Hello")}],
    }
    started = time.time()
    status: int | None = None
    rid: str | None = None
    whole = False
    error = ""
    shape: bool | None = None
    try:
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {client.key}"},
        ) as r:
            status, rid = r.status_code, r.headers.get("x-request-id")
            if r.status_code != 200:
                raw = await r.aread()
                shape = error_shape_ok(raw)
                error = raw[:300].decode(errors="replace")
            else:
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        whole = True
                    elif line.startswith("data: ") and '"error"' in line[:16]:
                        error = line[:300]
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    out = Outcome("chat-stream", status, rid, whole, started, time.time(), client.account,
                  error, shape)  # fmt: skip
    tally.add(out)
    return out


async def complete_once(
    sdk: openai.AsyncOpenAI, client: Client, model: str, max_tokens: int, tally: Tally
) -> Outcome:
    started = time.time()
    status: int | None = None
    rid: str | None = None
    whole = False
    error = ""
    shape: bool | None = None
    try:
        raw = await sdk.with_options(api_key=client.key).chat.completions.with_raw_response.create(
            model=model,
            max_tokens=max_tokens,
            messages=[{"role": "user", "content": PROMPTS.get(model, "Hello")}],
        )
        status, rid = raw.status_code, raw.headers.get("x-request-id")
        done = raw.parse()
        whole = status == 200 and bool(done.choices)
    except openai.APIStatusError as e:
        status, rid = e.status_code, e.response.headers.get("x-request-id")
        shape = error_shape_ok(e.response.content)
        error = e.response.text[:300]
    except openai.APIError as e:  # connection refused or reset, timeout
        error = f"{type(e).__name__}: {e}"
    out = Outcome("chat", status, rid, whole, started, time.time(), client.account, error, shape)
    tally.add(out)
    return out


class Load:
    """`streams` + `plain` workers sending back to back until `stop()`, spread over the
    clients and adapters."""

    def __init__(
        self,
        base_url: str,
        clients: list[Client],
        tally: Tally,
        *,
        streams: int = 2,
        plain: int = 2,
        max_tokens: int = 8,
        timeout_s: float = 60.0,
        pause_s: float = 0.05,
    ) -> None:
        self.base_url = base_url
        self.clients = clients
        self.tally = tally
        self.streams = streams
        self.plain = plain
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self._sdk: openai.AsyncOpenAI | None = None

    async def start(self) -> Load:
        limits = httpx.Limits(max_connections=self.streams + 4)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s,
                                       limits=limits)  # fmt: skip
        self._sdk = openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key="unset",
                                       max_retries=0, timeout=self.timeout_s)  # fmt: skip
        for n in range(self.streams):
            self._tasks.append(asyncio.create_task(self._worker(n, stream=True)))
        for n in range(self.plain):
            self._tasks.append(asyncio.create_task(self._worker(n, stream=False)))
        return self

    async def _worker(self, n: int, *, stream: bool) -> None:
        assert self._http is not None and self._sdk is not None
        models = itertools.cycle(list(PROMPTS)[n % 3 :] + list(PROMPTS)[: n % 3])
        clients = itertools.cycle(self.clients[n % len(self.clients) :] + self.clients)
        while not self._stop.is_set():
            client, model = next(clients), next(models)
            if stream:
                out = await stream_once(self._http, client, model, self.max_tokens, self.tally)
            else:
                out = await complete_once(self._sdk, client, model, self.max_tokens, self.tally)
            # Refused at once (gateway down, log full): do not spin.
            await asyncio.sleep(self.pause_s if out.status == 200 else 0.25)

    async def stop(self, timeout_s: float = 90.0) -> None:
        self._stop.set()
        done, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for t in done:
            t.result()  # a worker's own bug surfaces here
        if self._http is not None:
            await self._http.aclose()
        if self._sdk is not None:
            await self._sdk.close()
        if pending:
            raise AssertionError(
                f"{len(pending)} client requests still hung {timeout_s}s after stop"
            )
