"""The engine seam: how the gateway talks to one vLLM OpenAI server.

`EngineClient` is the Protocol; `VLLMHttpEngine` speaks HTTP to a real vLLM server (aiohttp,
one pooled session per engine); `serving.fake.FakeEngine` is the in-memory test double.
Third-party exceptions are translated here into `EngineUnavailable` / `EngineHTTPError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import aiohttp
import msgspec

from core.errors import Unavailable


class EngineUnavailable(Unavailable):
    """The engine cannot be reached or died mid-request."""


class EngineHTTPError(Unavailable):
    """The engine answered with an error status before any output. (A kind of
    `Unavailable` to the caller, except where the engine refused the request itself: the
    gateway's error table reads `status`.)"""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"engine answered {status}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        try:
            doc = msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            return self.body.decode("utf-8", "replace")[:500]
        if isinstance(doc, dict):
            err = doc.get("error", doc)
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                return str(err["message"])
            if isinstance(doc.get("detail"), str):
                return str(doc["detail"])
        return self.body.decode("utf-8", "replace")[:500]


@runtime_checkable
class EngineClient(Protocol):
    name: str

    async def post_json(self, path: str, body: bytes) -> bytes:
        """POST a JSON body, return the 200 response body; raise on anything else."""
        ...

    def stream(self, path: str, body: bytes) -> AsyncIterator[bytes]:
        """POST a streaming request; yield each SSE `data:` payload (without the prefix),
        `[DONE]` excluded. Closing the iterator aborts the request on the engine."""
        ...

    async def count_tokens(self, body: bytes) -> int:
        """Prompt tokens of a completion or chat request body, by the engine's tokenizer."""
        ...

    async def count_text(self, body: bytes, text: str) -> int:
        """Tokens of `text` under the model of `body` (no special tokens)."""
        ...

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


_JSON = {"Content-Type": "application/json"}


def _sse_data(lines: list[bytes]) -> list[bytes]:
    """The payloads of an SSE stream's `data: ` lines (other lines carry nothing for us)."""
    return [line[6:].rstrip(b"\r") for line in lines if line.startswith(b"data: ")]


class VLLMHttpEngine:
    """A vLLM OpenAI-compatible server reached over HTTP."""

    def __init__(self, base_url: str, *, name: str | None = None, timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No per-host limit: the gateway's own admission control bounds concurrency.
            conn = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=conn, timeout=self._timeout, auto_decompress=False
            )
        return self._session

    async def post_json(self, path: str, body: bytes) -> bytes:
        try:
            async with self._http().post(self.base_url + path, data=body, headers=_JSON) as r:
                data = await r.read()
                if r.status != 200:
                    raise EngineHTTPError(r.status, data)
                return data
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            raise EngineUnavailable(f"{self.name}: {e.__class__.__name__}: {e}") from e

    async def stream(self, path: str, body: bytes) -> AsyncIterator[bytes]:
        async with self._open_stream(path, body) as resp:
            try:
                # Whatever arrived, split into lines here: aiohttp's line iterator costs a
                # readuntil per line (two per event), which was a tenth of a stream's CPU.
                rest = b""
                async for data in resp.content.iter_any():
                    if b"\n" not in data:
                        rest += data
                        continue
                    lines = (rest + data).split(b"\n")
                    rest = lines.pop()
                    for payload in _sse_data(lines):
                        if payload == b"[DONE]":
                            return
                        yield payload
                if _sse_data([rest]) == [b"[DONE]"]:  # a last line without its newline
                    return
                # Anything else cut off at the end is a broken event, not one to pass on.
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
                raise EngineUnavailable(f"{self.name}: stream broke: {e}") from e
        # The engine closed the stream without [DONE]: it died mid-response.
        raise EngineUnavailable(f"{self.name}: stream ended without [DONE]")

    @asynccontextmanager
    async def _open_stream(self, path: str, body: bytes) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            cm = self._http().post(self.base_url + path, data=body, headers=_JSON)
            resp = await cm.__aenter__()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            raise EngineUnavailable(f"{self.name}: {e.__class__.__name__}: {e}") from e
        try:
            if resp.status != 200:
                raise EngineHTTPError(resp.status, await resp.read())
            yield resp
        finally:
            # Closing without reading to the end drops the connection, which makes vLLM abort
            # the request: a client that disconnects stops generation too.
            resp.close()
            await cm.__aexit__(None, None, None)

    async def count_tokens(self, body: bytes) -> int:
        req = msgspec.json.decode(body)
        ask: dict[str, Any] = {"model": req["model"]}
        if "messages" in req:
            ask["messages"] = req["messages"]
        else:
            ask["prompt"] = req["prompt"]
        return await self._tokenize(ask)

    async def count_text(self, body: bytes, text: str) -> int:
        model = msgspec.json.decode(body)["model"]
        return await self._tokenize({"model": model, "prompt": text, "add_special_tokens": False})

    async def _tokenize(self, ask: dict[str, Any]) -> int:
        doc = msgspec.json.decode(await self.post_json("/tokenize", msgspec.json.encode(ask)))
        return int(doc["count"])

    async def load_adapter(self, name: str, path: str) -> None:
        body = msgspec.json.encode({"lora_name": name, "lora_path": path})
        try:
            await self.post_json("/v1/load_lora_adapter", body)
        except EngineHTTPError as e:
            if "already been loaded" not in e.message:
                raise

    async def unload_adapter(self, name: str) -> None:
        body = msgspec.json.encode({"lora_name": name})
        try:
            await self.post_json("/v1/unload_lora_adapter", body)
        except EngineHTTPError as e:
            if e.status != 404 and "not found" not in e.message.lower():
                raise

    async def healthy(self) -> bool:
        try:
            async with self._http().get(
                self.base_url + "/health", timeout=aiohttp.ClientTimeout(total=3)
            ) as r:
                return r.status == 200
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
