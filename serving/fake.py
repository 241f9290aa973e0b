"""An in-memory engine with vLLM's wire behaviour, for unit tests and overhead benchmarks.

It answers like vLLM 0.32 does, warts included (null `annotations`, integer error codes, a
usage chunk with empty `choices`), so the gateway's normalisation is exercised.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from serving.engine import EngineHTTPError, EngineUnavailable

WORDS = "the quick brown fox jumps over a lazy dog while seven bakers knead warm bread".split()


def _not_found(model: str) -> EngineHTTPError:
    body = {
        "error": {
            "message": f"The model `{model}` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    return EngineHTTPError(404, msgspec.json.encode(body))


class FakeEngine:
    def __init__(
        self,
        name: str = "fake",
        *,
        base: str = "royalty-tiny",
        token_delay_s: float = 0.0,
        load_delay_s: float = 0.0,
    ) -> None:
        self.name = name
        self.base = base
        self.token_delay_s = token_delay_s
        self.load_delay_s = load_delay_s
        self.adapters: dict[str, str] = {}
        self.load_calls: list[str] = []
        self.unload_calls: list[str] = []
        self.alive = True
        self.aborted = 0

    # --- EngineClient -------------------------------------------------------------------
    async def post_json(self, path: str, body: bytes) -> bytes:
        self._check_alive()
        req = msgspec.json.decode(body)
        return msgspec.json.encode(self._complete(path, req))

    async def stream(self, path: str, body: bytes) -> AsyncIterator[bytes]:
        self._check_alive()
        req = msgspec.json.decode(body)
        self._check_model(req["model"])
        chat = path.endswith("chat/completions")
        n = self._n_tokens(req)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        continuous = bool((req.get("stream_options") or {}).get("continuous_usage_stats"))
        prompt_tokens = self._prompt_tokens(req)
        try:
            if chat:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""},
                         "logprobs": None, "finish_reason": None}  # fmt: skip
                yield self._chunk(rid, created, obj, req["model"], first, None)
            for i in range(n):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                self._check_alive()
                text = WORDS[i % len(WORDS)] + " "
                done = i == n - 1
                choice: dict[str, Any] = {"index": 0, "logprobs": None,
                                          "finish_reason": "length" if done else None}  # fmt: skip
                if chat:
                    choice["delta"] = {"content": text}
                else:
                    choice["text"] = text
                    choice["stop_reason"] = None
                usage = self._usage(prompt_tokens, i + 1) if continuous else None
                yield self._chunk(rid, created, obj, req["model"], choice, usage)
            if (req.get("stream_options") or {}).get("include_usage"):
                yield msgspec.json.encode(
                    {
                        "id": rid,
                        "object": obj,
                        "created": created,
                        "model": req["model"],
                        "choices": [],
                        "usage": self._usage(prompt_tokens, n),
                    }  # fmt: skip
                )
        except (GeneratorExit, asyncio.CancelledError):
            # The client went away: closed at a yield or cancelled mid-sleep.
            self.aborted += 1
            raise

    async def count_tokens(self, body: bytes) -> int:
        self._check_alive()
        return self._prompt_tokens(msgspec.json.decode(body))

    async def count_text(self, body: bytes, text: str) -> int:
        self._check_alive()
        return len(text.split())

    async def load_adapter(self, name: str, path: str) -> None:
        self._check_alive()
        self.load_calls.append(name)
        if self.load_delay_s:
            await asyncio.sleep(self.load_delay_s)
        self.adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        self.unload_calls.append(name)
        self.adapters.pop(name, None)

    async def healthy(self) -> bool:
        return self.alive

    async def close(self) -> None:
        return None

    # --- behaviour ----------------------------------------------------------------------
    def _check_alive(self) -> None:
        if not self.alive:
            raise EngineUnavailable(f"{self.name}: connection refused")

    def _check_model(self, model: str) -> None:
        if model != self.base and model not in self.adapters:
            raise _not_found(model)

    @staticmethod
    def _n_tokens(req: dict[str, Any]) -> int:
        n = req.get("max_completion_tokens") or req.get("max_tokens") or 16
        return max(1, min(int(n), 256))

    @staticmethod
    def _prompt_tokens(req: dict[str, Any]) -> int:
        if "messages" in req:
            return sum(len(str(m.get("content") or "").split()) + 3 for m in req["messages"])
        return len(str(req.get("prompt", "")).split()) + 1

    @staticmethod
    def _usage(prompt: int, completion: int) -> dict[str, Any]:
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion, "prompt_tokens_details": None}  # fmt: skip

    @staticmethod
    def _chunk(rid: str, created: int, obj: str, model: str, choice: dict[str, Any],
               usage: dict[str, Any] | None) -> bytes:  # fmt: skip
        return msgspec.json.encode(
            {
                "id": rid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }  # fmt: skip
        )

    def _complete(self, path: str, req: dict[str, Any]) -> dict[str, Any]:
        self._check_model(req["model"])
        n = self._n_tokens(req)
        text = "".join(WORDS[i % len(WORDS)] + " " for i in range(n))
        usage = self._usage(self._prompt_tokens(req), n)
        created = int(time.time())
        if path.endswith("chat/completions"):
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None,
                       "annotations": None, "audio": None, "function_call": None,
                       "tool_calls": [], "reasoning_content": None}  # fmt: skip
            return {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
                    "created": created, "model": req["model"],
                    "choices": [{"index": 0, "message": message, "logprobs": None,
                                 "finish_reason": "length", "stop_reason": None}],
                    "usage": usage, "prompt_logprobs": None}  # fmt: skip
        return {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion",
                "created": created, "model": req["model"],
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": "length", "stop_reason": None}],
                "usage": usage}  # fmt: skip
