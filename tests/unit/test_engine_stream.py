"""VLLMHttpEngine.stream splits the engine's SSE bytes into events itself: whatever the TCP
reads cut (mid-line, several events at once, CRLF, a last line without its newline), the
payloads come out whole and in order, and a stream without [DONE] is an engine failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from serving.engine import EngineUnavailable, VLLMHttpEngine

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


@asynccontextmanager
async def engine_sending(pieces: Sequence[bytes]) -> AsyncIterator[VLLMHttpEngine]:
    """A server that answers any request with HEAD and then `pieces`, each its own write
    (with a pause between, so that each arrives as its own read), then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        for p in pieces:
            writer.write(p)
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = VLLMHttpEngine(f"http://127.0.0.1:{port}")
    try:
        yield engine
    finally:
        await engine.close()
        server.close()
        await server.wait_closed()


async def collect(pieces: Sequence[bytes]) -> list[bytes]:
    async with engine_sending(pieces) as engine:
        return [p async for p in engine.stream("/v1/completions", b"{}")]


EVENTS = [b'{"n":%d,"text":"a\\nb"}' % i for i in range(5)]
WIRE = b"".join(b"data: " + e + b"\n\n" for e in EVENTS) + b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "cuts",
    [
        [len(WIRE)],  # everything in one read
        list(range(1, len(WIRE) + 1)),  # one byte at a time
        [7, 30, 31, 32, 60, 100, len(WIRE)],  # cuts mid-prefix, mid-payload, between lines
    ],
)
async def test_payloads_come_out_whole_whatever_the_reads(cuts: list[int]) -> None:
    pieces, start = [], 0
    for c in cuts:
        pieces.append(WIRE[start:c])
        start = c
    assert await collect(pieces) == EVENTS


async def test_crlf_comments_and_a_last_line_without_newline() -> None:
    wire = b": keep-alive\r\n\r\ndata: " + EVENTS[0] + b"\r\n\r\nevent: x\r\ndata: [DONE]"
    assert await collect([wire[:20], wire[20:]]) == [EVENTS[0]]


async def test_nothing_after_done_is_read() -> None:
    assert await collect([b"data: [DONE]\n\n", b"data: " + EVENTS[0] + b"\n\n"]) == []


async def test_a_stream_without_done_is_an_engine_failure() -> None:
    got: list[bytes] = []
    with pytest.raises(EngineUnavailable, match="without \\[DONE\\]"):
        async with engine_sending(
            [b"data: " + EVENTS[0] + b"\n\n", b"data: " + EVENTS[1][:5]]
        ) as e:
            async for payload in e.stream("/v1/completions", b"{}"):
                got.append(payload)
    assert got == [EVENTS[0]]  # the cut-off event is not passed on as if it were whole
