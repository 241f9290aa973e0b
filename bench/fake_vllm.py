"""A fast fake vLLM OpenAI server, for measuring what sits in front of it.

It speaks vLLM 0.32's wire format (warts included: null `annotations`/`function_call` in chat
messages, `stop_reason`, a final usage chunk with empty `choices`, integer error codes) over a
hand-rolled HTTP/1.1 server on raw asyncio + uvloop + httptools, so that on one core it costs
as little as possible and the thing under test (the gateway, LiteLLM) is what gets measured.

Endpoints: GET /health, GET /v1/models, POST /v1/load_lora_adapter,
POST /v1/unload_lora_adapter, POST /v1/chat/completions, POST /v1/completions (streaming and
not; streaming honours `stream_options.include_usage` and `continuous_usage_stats`, ends with
`data: [DONE]`). Bench control: GET/POST /fake/config (token_delay_ms, ttft_ms,
default_tokens), GET /fake/stats.

Tokens: `max_completion_tokens` / `max_tokens` from the request (capped by --max-tokens-cap),
else --tokens. One token is one word; each streamed token is its own SSE event.

    python bench/fake_vllm.py --port 8100 [--tokens 16] [--token-delay-ms 0] [--cpu 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httptools

try:  # the project venv has msgspec; fall back to the stdlib elsewhere
    import msgspec

    _decode = msgspec.json.decode
    _encode = msgspec.json.encode
except ImportError:  # pragma: no cover
    _decode = json.loads

    def _encode(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


WORDS = "the quick brown fox jumps over a lazy dog while seven bakers knead warm bread".split()
_WORDS_JSON = [json.dumps(w + " ")[1:-1] for w in WORDS]  # already JSON-escaped


class Config:
    def __init__(self, args: argparse.Namespace) -> None:
        self.model = args.model
        self.default_tokens = args.tokens
        self.max_tokens_cap = args.max_tokens_cap
        self.token_delay_s = args.token_delay_ms / 1000.0
        self.ttft_s = args.ttft_ms / 1000.0
        self.lora_load_s = getattr(args, "lora_load_ms", 0.0) / 1000.0
        max_running = getattr(args, "max_running", 0)
        # vLLM's batch has a size (max_num_seqs): beyond it, requests wait in its queue.
        self.batch = asyncio.Semaphore(max_running) if max_running else None
        self.running = 0
        self.waiting = 0
        self.adapters: dict[str, str] = {}
        self.requests = 0
        self.streams = 0
        self.load_calls = 0
        self.connections = 0
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}{int(time.time()):x}"

    def new_id(self) -> str:
        return f"{self._prefix}{next(self._ids):012x}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "default_tokens": self.default_tokens,
            "max_tokens_cap": self.max_tokens_cap,
            "token_delay_ms": self.token_delay_s * 1000.0,
            "ttft_ms": self.ttft_s * 1000.0,
            "adapters": sorted(self.adapters),
        }


# --- HTTP plumbing --------------------------------------------------------------------------

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            422: b"Unprocessable Entity", 500: b"Internal Server Error"}  # fmt: skip


def _response(status: int, body: bytes, ctype: bytes = b"application/json",
              keep_alive: bool = True) -> bytes:  # fmt: skip
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"OK")),
        b"content-type: ", ctype, b"\r\n",
        b"content-length: %d\r\n" % len(body),
        b"" if keep_alive else b"connection: close\r\n",
        b"\r\n",
        body,
    ))  # fmt: skip


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _chunk(payload: bytes) -> bytes:
    """One HTTP chunk holding one SSE event."""
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


_DONE_CHUNK = _chunk(b"[DONE]") + b"0\r\n\r\n"


def _error(status: int, message: str, etype: str, param: str | None = None) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": etype, "param": param, "code": status}}
    return status, _encode(body)


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("cfg", "transport", "parser", "url", "body", "busy", "queue", "closed")

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.busy = False  # a delayed response is in flight on this connection
        self.queue: list[tuple[bytes, bytes, bytes, bool]] = []
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.cfg.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.transport.close()  # type: ignore[union-attr]
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_response(400, b'{"error":"bad request"}', keep_alive=False))
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        item = (method, self.url, b"".join(self.body), keep)
        if self.busy:
            self.queue.append(item)  # pipelined behind a delayed response
        else:
            self.handle(*item)

    # dispatch
    def handle(self, method: bytes, url: bytes, body: bytes, keep: bool) -> None:
        cfg = self.cfg
        path = url.split(b"?", 1)[0]
        t = self.transport
        assert t is not None
        if method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            cfg.requests += 1
            try:
                req = _decode(body) if body else {}
                if not isinstance(req, dict):
                    raise ValueError("body is not an object")
            except Exception as e:
                self._send(*_error(400, f"invalid JSON body: {e}", "BadRequestError"), keep=keep)
                return
            chat = path == b"/v1/chat/completions"
            model = req.get("model")
            if model != cfg.model and model not in cfg.adapters:
                self._send(*_error(404, f"The model `{model}` does not exist.", "NotFoundError",
                                   "model"), keep=keep)  # fmt: skip
                return
            if chat and not req.get("messages"):
                self._send(*_error(400, "messages: field required", "BadRequestError"),
                           keep=keep)  # fmt: skip
                return
            n = req.get("max_completion_tokens") or req.get("max_tokens") or cfg.default_tokens
            n = max(1, min(int(n), cfg.max_tokens_cap))
            prompt_tokens = _prompt_tokens(req, chat)
            if req.get("stream"):
                cfg.streams += 1
                so = req.get("stream_options") or {}
                include_usage = bool(so.get("include_usage"))
                continuous = include_usage and bool(so.get("continuous_usage_stats"))
                if cfg.token_delay_s or cfg.ttft_s:
                    self.busy = True
                    asyncio.ensure_future(self._stream_paced(
                        chat, model, n, prompt_tokens, include_usage, continuous, keep))  # fmt: skip
                else:
                    t.write(_SSE_HEAD + b"".join(
                        _stream_events(cfg, chat, model, n, prompt_tokens, include_usage,
                                       continuous)))  # fmt: skip
                    if not keep:
                        t.close()
            else:
                payload = _full_response(cfg, chat, model, n, prompt_tokens)
                delay = cfg.ttft_s + cfg.token_delay_s * n
                if delay:
                    self.busy = True
                    asyncio.ensure_future(self._delayed(delay, 200, payload, keep))
                else:
                    self._send(200, payload, keep=keep)
            return
        if method == b"GET" and path == b"/health":
            self._send(200, b"", keep=keep)
        elif method == b"GET" and path == b"/metrics":
            m = cfg.model
            text = (f'vllm:num_requests_running{{model_name="{m}"}} {cfg.running}\n'
                    f'vllm:num_requests_waiting{{model_name="{m}"}} {cfg.waiting}\n')  # fmt: skip
            self._send(200, text.encode(), ctype=b"text/plain; version=0.0.4", keep=keep)
        elif method == b"GET" and path == b"/v1/models":
            self._send(200, _models(cfg), keep=keep)
        elif method == b"POST" and path == b"/v1/load_lora_adapter":
            cfg.load_calls += 1
            req = _decode(body) if body else {}
            name = req.get("lora_name")
            if not name or not req.get("lora_path"):
                self._send(*_error(400, "lora_name and lora_path are required",
                                   "BadRequestError"), keep=keep)  # fmt: skip
            elif name in cfg.adapters:
                self._send(*_error(400, f"The lora adapter '{name}' has already been loaded.",
                                   "InvalidUserInput"), keep=keep)  # fmt: skip
            else:
                cfg.adapters[name] = req["lora_path"]
                msg = f"Success: LoRA adapter '{name}' added successfully.".encode()
                if cfg.lora_load_s:  # reading and moving the weights takes time
                    self.busy = True
                    asyncio.ensure_future(self._delayed(cfg.lora_load_s, 200, msg, keep,
                                                        ctype=b"text/plain; charset=utf-8"))  # fmt: skip
                else:
                    self._send(200, msg, ctype=b"text/plain; charset=utf-8", keep=keep)
        elif method == b"POST" and path == b"/v1/unload_lora_adapter":
            req = _decode(body) if body else {}
            name = req.get("lora_name")
            if name not in cfg.adapters:
                self._send(*_error(404, f"The lora adapter '{name}' cannot be found.",
                                   "NotFoundError"), keep=keep)  # fmt: skip
            else:
                del cfg.adapters[name]
                msg = f"Success: LoRA adapter '{name}' removed successfully.".encode()
                self._send(200, msg, ctype=b"text/plain; charset=utf-8", keep=keep)
        elif path == b"/fake/config":
            if method == b"POST" and body:
                changes = _decode(body)
                if "token_delay_ms" in changes:
                    cfg.token_delay_s = float(changes["token_delay_ms"]) / 1000.0
                if "ttft_ms" in changes:
                    cfg.ttft_s = float(changes["ttft_ms"]) / 1000.0
                if "default_tokens" in changes:
                    cfg.default_tokens = int(changes["default_tokens"])
            self._send(200, _encode(cfg.as_dict()), keep=keep)
        elif method == b"GET" and path == b"/fake/stats":
            stats = {"requests": cfg.requests, "streams": cfg.streams,
                     "load_calls": cfg.load_calls, "connections": cfg.connections}  # fmt: skip
            self._send(200, _encode(stats), keep=keep)
        else:
            self._send(404, b'{"detail":"Not Found"}', keep=keep)

    def _send(self, status: int, body: bytes, ctype: bytes = b"application/json",
              keep: bool = True) -> None:  # fmt: skip
        t = self.transport
        if t is None or self.closed:
            return
        t.write(_response(status, body, ctype, keep))
        if not keep:
            t.close()

    def _next(self) -> None:
        self.busy = False
        while self.queue and not self.busy and not self.closed:
            self.handle(*self.queue.pop(0))

    async def _delayed(self, delay: float, status: int, payload: bytes, keep: bool,
                       ctype: bytes = b"application/json") -> None:  # fmt: skip
        async with self._in_batch():
            await asyncio.sleep(delay)
        self._send(status, payload, ctype, keep=keep)
        self._next()

    @contextlib.asynccontextmanager
    async def _in_batch(self) -> AsyncIterator[None]:
        """Hold one of the engine's batch slots (--max-running), queueing for it if full."""
        cfg = self.cfg
        if cfg.batch is None:
            yield
            return
        cfg.waiting += 1
        try:
            await cfg.batch.acquire()
        finally:
            cfg.waiting -= 1
        cfg.running += 1
        try:
            yield
        finally:
            cfg.running -= 1
            cfg.batch.release()

    async def _stream_paced(self, chat: bool, model: str, n: int, prompt_tokens: int,
                            include_usage: bool, continuous: bool, keep: bool) -> None:  # fmt: skip
        t = self.transport
        assert t is not None
        async with self._in_batch():
            await self._stream_events_paced(chat, model, n, prompt_tokens, include_usage,
                                            continuous)  # fmt: skip
        if not keep and not self.closed:
            t.close()
        self._next()

    async def _stream_events_paced(self, chat: bool, model: str, n: int, prompt_tokens: int,
                                   include_usage: bool, continuous: bool) -> None:  # fmt: skip
        cfg = self.cfg
        t = self.transport
        assert t is not None
        events = _stream_events(cfg, chat, model, n, prompt_tokens, include_usage, continuous)
        if cfg.ttft_s:
            await asyncio.sleep(cfg.ttft_s)
        if self.closed:
            return
        t.write(_SSE_HEAD)
        delay = cfg.token_delay_s
        # events: [role chunk (chat)] token chunks..., [usage chunk], [DONE]+terminator
        first_token = 1 if chat else 0
        for i, ev in enumerate(events):
            if delay and first_token < i <= first_token + n - 1:
                await asyncio.sleep(delay)  # one decode step between tokens
            if self.closed:
                return  # client went away: vLLM aborts the request
            t.write(ev)


# --- vLLM-shaped payloads -------------------------------------------------------------------


def _prompt_tokens(req: dict[str, Any], chat: bool) -> int:
    if chat:
        total = 0
        for m in req.get("messages") or ():
            c = m.get("content") if isinstance(m, dict) else None
            total += (len(c.split()) if isinstance(c, str) else 0) + 3
        return total
    p = req.get("prompt", "")
    return (len(p.split()) if isinstance(p, str) else len(p)) + 1


def _usage_json(prompt: int, completion: int) -> str:
    return (f'{{"prompt_tokens":{prompt},"total_tokens":{prompt + completion},'
            f'"completion_tokens":{completion},"prompt_tokens_details":null}}')  # fmt: skip


def _stream_events(cfg: Config, chat: bool, model: str, n: int, prompt: int,
                   include_usage: bool, continuous: bool) -> list[bytes]:  # fmt: skip
    created = int(time.time())
    mj = json.dumps(model)
    if chat:
        head = (f'{{"id":"chatcmpl-{cfg.new_id()}","object":"chat.completion.chunk",'
                f'"created":{created},"model":{mj},"choices":[')  # fmt: skip
    else:
        head = (f'{{"id":"cmpl-{cfg.new_id()}","object":"text_completion",'
                f'"created":{created},"model":{mj},"choices":[')  # fmt: skip
    out: list[bytes] = []
    if chat:
        usage = f',"usage":{_usage_json(prompt, 0)}' if continuous else ""
        out.append(
            _chunk(
                (
                    head + '{"index":0,"delta":{"role":"assistant","content":""},'
                    '"logprobs":null,"finish_reason":null}]' + usage + "}"
                ).encode()
            )
        )
    nw = len(_WORDS_JSON)
    for i in range(n):
        word = _WORDS_JSON[i % nw]
        finish = '"length"' if i == n - 1 else "null"
        if chat:
            choice = (f'{{"index":0,"delta":{{"content":"{word}"}},"logprobs":null,'
                      f'"finish_reason":{finish}' + (',"stop_reason":null}' if i == n - 1 else "}"))  # fmt: skip
        else:
            choice = (f'{{"index":0,"text":"{word}","logprobs":null,'
                      f'"finish_reason":{finish},"stop_reason":null}}')  # fmt: skip
        usage = f',"usage":{_usage_json(prompt, i + 1)}' if continuous else ""
        out.append(_chunk((head + choice + "]" + usage + "}").encode()))
    if include_usage:
        out.append(_chunk((head + '],"usage":' + _usage_json(prompt, n) + "}").encode()))
    out.append(_DONE_CHUNK)
    return out


def _full_response(cfg: Config, chat: bool, model: str, n: int, prompt: int) -> bytes:
    nw = len(_WORDS_JSON)
    text = "".join(_WORDS_JSON[i % nw] for i in range(n))
    created = int(time.time())
    mj = json.dumps(model)
    usage = _usage_json(prompt, n)
    if chat:
        return (
            f'{{"id":"chatcmpl-{cfg.new_id()}","object":"chat.completion","created":{created},'
            f'"model":{mj},"choices":[{{"index":0,"message":{{"role":"assistant",'
            f'"content":"{text}","refusal":null,"annotations":null,"audio":null,'
            f'"function_call":null,"tool_calls":[],"reasoning_content":null}},'
            f'"logprobs":null,"finish_reason":"length","stop_reason":null}}],'
            f'"service_tier":null,"system_fingerprint":null,"usage":{usage},'
            f'"prompt_logprobs":null,"kv_transfer_params":null}}'
        ).encode()
    return (
        f'{{"id":"cmpl-{cfg.new_id()}","object":"text_completion","created":{created},'
        f'"model":{mj},"choices":[{{"index":0,"text":"{text}","logprobs":null,'
        f'"finish_reason":"length","stop_reason":null,"prompt_logprobs":null}}],'
        f'"service_tier":null,"system_fingerprint":null,"usage":{usage},'
        f'"kv_transfer_params":null}}'
    ).encode()


def _models(cfg: Config) -> bytes:
    created = int(time.time())
    data = [{"id": cfg.model, "object": "model", "created": created, "owned_by": "vllm",
             "root": cfg.model, "parent": None, "max_model_len": 512}]  # fmt: skip
    data += [{"id": a, "object": "model", "created": created, "owned_by": "vllm", "root": p,
              "parent": cfg.model, "max_model_len": 512} for a, p in cfg.adapters.items()]  # fmt: skip
    return _encode({"object": "list", "data": data})


# --- main -------------------------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    cfg = Config(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(cfg), args.host, args.port, backlog=4096, reuse_address=True
    )
    print(f"fake vLLM listening on http://{args.host}:{args.port} model={cfg.model} "
          f"tokens={cfg.default_tokens} token_delay_ms={args.token_delay_ms}", flush=True)  # fmt: skip
    async with server:
        await server.serve_forever()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--model", default="royalty-tiny", help="served base model name")
    p.add_argument("--tokens", type=int, default=16, help="tokens when the request sets none")
    p.add_argument("--max-tokens-cap", type=int, default=4096)
    p.add_argument("--token-delay-ms", type=float, default=0.0, help="delay between tokens")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first token")
    p.add_argument("--lora-load-ms", type=float, default=0.0,
                   help="time load_lora_adapter takes (simulated weight loading)")  # fmt: skip
    p.add_argument("--max-running", type=int, default=0,
                   help="batch size: requests beyond it queue (0 = unlimited); paced modes only")  # fmt: skip
    p.add_argument("--cpu", type=int, action="append", help="pin to this CPU (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cpu:
        os.sched_setaffinity(0, set(args.cpu))
    try:
        import uvloop

        run = uvloop.run
    except (ImportError, AttributeError):  # pragma: no cover
        run = asyncio.run
    try:
        run(serve(args))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
