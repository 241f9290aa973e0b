"""Server-sent event streams that stop the moment the client hangs up.

Litestar's `Stream` listens for `http.disconnect` and cancels the sending task, but leaves
the iterator to the garbage collector: the engine request it wraps is closed (and the
stream's usage recorded) whenever the collector gets to it. This response races every read
of the engine against the client's `http.disconnect` itself, and on a hang-up closes the
iterator at once: the engine stops generating and the usage record names the tokens
generated until then (`client_cancelled`).

One watcher task per stream, not one per chunk: it awaits `receive()` and cancels the
sending task on a disconnect, which interrupts whatever the stream awaits at that moment
(the engine, or a send blocked on a slow client).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse

if TYPE_CHECKING:
    from litestar.app import Litestar
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.connection import Request
    from litestar.datastructures.cookie import Cookie
    from litestar.enums import MediaType
    from litestar.response.base import ASGIResponse
    from litestar.types import HTTPResponseBodyEvent, Receive, Send, TypeEncodersMap


class _HangUpAwareResponse(ASGIStreamingResponse):
    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        hung_up = False

        async def watch() -> None:
            nonlocal hung_up
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    hung_up = True
                    task.cancel()
                    return

        watcher = asyncio.create_task(watch(), name="sse-hang-up-watch")
        iterator = self.iterator
        try:
            async for chunk in iterator:
                body: HTTPResponseBodyEvent = {
                    "type": "http.response.body",
                    "body": chunk,  # type: ignore[typeddict-item]
                    "more_body": True,
                }
                await send(body)
            end: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": b"",
                "more_body": False,
            }
            await send(end)
        except asyncio.CancelledError:
            if not hung_up:
                raise
            task.uncancel()  # the client left; this server task ends normally
        finally:
            watcher.cancel()
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # close the engine request now, and record what it produced


class SSEStream(Stream):
    """`text/event-stream` frames (bytes) from an async iterator, closed on hang-up."""

    def __init__(self, frames: AsyncIterator[bytes], *, headers: dict[str, str]) -> None:
        super().__init__(frames, media_type="text/event-stream", headers=headers)

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request,
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        merged: dict[str, Any] = {**headers, **self.headers} if headers else dict(self.headers)
        all_cookies = self.cookies if cookies is None else itertools.chain(self.cookies, cookies)
        return _HangUpAwareResponse(
            background=self.background or background,
            content_length=0,
            cookies=all_cookies,
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers=merged,
            is_head_response=is_head_response,
            iterator=self.iterator,  # type: ignore[arg-type]
            media_type="text/event-stream",
            status_code=self.status_code or status_code,
        )
