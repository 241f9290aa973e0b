"""Fail closed at the gateway: nothing is served that cannot be recorded, hostile request
shapes are a 400 before anything else sees them, and a stream whose record cannot be written
ends with an error instead of `[DONE]` while its record is kept and retried."""

from __future__ import annotations

import datetime as dt
import errno
import json
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from support.gateway_harness import make_harness
from support.openai_schema import assert_conforms
from support.usage_events import usage_event

from metering.usage import log as usage_log
from metering.usage.log import UsageLog
from metering.usage.recorder import MemoryUsageSink, UsageNotRecorded, UsageRecorder
from metering.usage.store import InMemoryUsageStore, UsageStoreUnavailable

CHAT = {"model": "recipes", "messages": [{"role": "user", "content": "Recipe:"}], "max_tokens": 6}
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]


@pytest.fixture
async def gw():
    h = make_harness()
    sink = MemoryUsageSink()
    h.services.inference.usage = sink
    async with AsyncTestClient(app=h.app()) as client:
        client.h, client.sink = h, sink  # type: ignore[attr-defined]
        client.hdr = {"Authorization": f"Bearer {await h.key()}"}  # type: ignore[attr-defined]
        yield client


async def test_unrecordable_usage_refuses_requests_and_healthz_says_why(gw) -> None:
    gw.sink.unhealthy = "the usage log's disk has 0 MiB free"
    for body in (CHAT, {**CHAT, "stream": True}):
        r = await gw.post("/v1/chat/completions", json=body, headers=gw.hdr)
        assert r.status_code == 503, r.text
        assert_conforms(r.json(), "ErrorResponse")
        assert r.json()["error"]["code"] == "usage_unavailable"
        assert int(r.headers["retry-after"]) >= 1
    assert gw.h.engine.load_calls == []  # the engine was never asked
    health = await gw.get("/healthz")
    assert health.status_code == 503 and "0 MiB free" in health.json()["error"]["message"]
    gw.sink.unhealthy = None
    assert (await gw.get("/healthz")).status_code == 200
    assert (await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)).status_code == 200


async def test_a_response_whose_record_fails_is_refused_not_served(gw) -> None:
    gw.sink.fail_next = 1
    r = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    assert r.status_code == 503 and r.json()["error"]["code"] == "usage_unavailable"
    assert gw.sink.held == []  # not served, so not billed


async def test_a_stream_whose_record_fails_ends_in_an_error_and_its_record_is_held(gw) -> None:
    gw.sink.fail_next = 1
    r = await gw.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=gw.hdr)
    assert r.status_code == 200  # the output went out before the record could be written
    events = sse_events(r.text)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "usage_unavailable"
    [held] = gw.sink.held  # the output was delivered: its record is kept and retried
    assert held.status == "ok" and held.completion_tokens > 0
    assert held.request_id == r.headers["x-request-id"]


@pytest.mark.parametrize(
    "model", ["x\u0000y", "a" * 9000, "", "two words", "zero\u200bwidth", "ｆｕｌｌ", "tab\t"]
)
async def test_model_names_that_cannot_be_stored_are_a_400(gw, model: str) -> None:
    for path, body in (
        ("/v1/chat/completions", {**CHAT, "model": model}),
        ("/v1/completions", {"model": model, "prompt": "x", "max_tokens": 2}),
    ):
        r = await gw.post(path, json=body, headers=gw.hdr)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "model"
        assert_conforms(r.json(), "ErrorResponse")
    assert gw.sink.records == []  # refused at decode: nothing to record


async def test_unknown_models_are_recorded_under_a_placeholder(gw) -> None:
    r = await gw.post("/v1/chat/completions", json={**CHAT, "model": "gpt-17"}, headers=gw.hdr)
    assert r.status_code == 404
    [rec] = gw.sink.records
    assert rec.model == "<unknown>" and rec.status == "error" and rec.http_status == 404


@pytest.mark.parametrize("depth", [65, 500, 900, 5000, 200_000])
async def test_deep_nesting_is_a_400_on_every_field(gw, depth: int) -> None:
    deep = "[" * depth + "]" * depth
    bodies = [
        # content parts are free-form objects: the one place a client can nest at will
        '{"model":"recipes","messages":[{"role":"user","content":[{"type":"text","text":"x",'
        f'"extra":{deep}}}]}}]}}',
        f'{{"model":"recipes","messages":[{{"role":"user","content":"x"}}],"tools":{deep}}}',
    ]
    for raw in bodies:
        r = await gw.post(
            "/v1/chat/completions",
            content=raw.encode(),
            headers={**gw.hdr, "Content-Type": "application/json"},
        )
        assert r.status_code in (400, 413), r.text[:300]
        assert_conforms(r.json(), "ErrorResponse")
    # An unknown field is dropped unread, however deep (msgspec's own limit aside).
    raw = f'{{"model":"recipes","messages":[{{"role":"user","content":"x"}}],"unknown":{deep}}}'
    r = await gw.post(
        "/v1/chat/completions",
        content=raw.encode(),
        headers={**gw.hdr, "Content-Type": "application/json"},
    )
    assert r.status_code in (200, 400, 413), r.text[:300]
    ok = await gw.post("/v1/chat/completions", json=CHAT, headers=gw.hdr)
    assert ok.status_code == 200


async def test_nesting_a_real_client_sends_is_accepted(gw) -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(20):  # a JSON schema 40 levels deep
        schema = {"type": "object", "properties": {"x": schema}}
    body = {**CHAT, "response_format": {"type": "json_schema",
                                        "json_schema": {"name": "n", "schema": schema}}}  # fmt: skip
    r = await gw.post("/v1/chat/completions", json=body, headers=gw.hdr)
    assert r.status_code == 200, r.text


# --- the recorder: log, else store, else held and retried -----------------------------------


def _rec(i: int) -> object:
    return usage_event(f"req-{i}", account_id=1, started_at=T0, prompt_tokens=3,
                       completion_tokens=4)  # fmt: skip


async def test_recorder_falls_back_to_the_store_then_to_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def enospc(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    log = await UsageLog.open(tmp_path)
    store = InMemoryUsageStore()
    recorder = UsageRecorder(log, store, retry_s=0.05)
    try:
        await recorder.record(_rec(1))  # type: ignore[arg-type]
        assert log.pending_records == 1 and store.rows == {}
        monkeypatch.setattr(usage_log.os, "fdatasync", enospc)
        await recorder.record(_rec(2))  # type: ignore[arg-type]
        assert "req-2" in store.rows and recorder.via_store == 1
        store.fail_next = 10**6
        with pytest.raises(UsageNotRecorded):
            await recorder.record(_rec(3))  # type: ignore[arg-type]
        assert recorder.held == 1
        with pytest.raises(UsageNotRecorded):
            await recorder.record(_rec(4), hold=False)  # type: ignore[arg-type]
        assert recorder.held == 1  # not held: its response was refused instead
        monkeypatch.undo()  # the disk works again: the held record goes to the log
        for _ in range(100):
            if recorder.held == 0:
                break
            await __import__("asyncio").sleep(0.05)
        assert recorder.held == 0
        records, _ = await log.read_unshipped(10)
        assert [r.request_id for r in records] == ["req-1", "req-3"]
    finally:
        assert await recorder.close()
        await log.close()


async def test_recorder_close_makes_a_last_attempt(tmp_path: Path) -> None:
    log = await UsageLog.open(tmp_path)
    store = InMemoryUsageStore()
    recorder = UsageRecorder(log, store, retry_s=3600)
    await log.close()  # the log refuses everything from now on
    store.fail_next = 1
    with pytest.raises(UsageNotRecorded):
        await recorder.record(_rec(1))  # type: ignore[arg-type]
    assert recorder.held == 1
    assert await recorder.close()  # the store takes it on the last attempt
    assert "req-1" in store.rows


async def test_the_store_double_still_reports_outages() -> None:
    store = InMemoryUsageStore()
    store.fail_next = 1
    with pytest.raises(UsageStoreUnavailable):
        await store.insert_batch([_rec(1)])  # type: ignore[list-item]


async def test_a_stream_refused_by_an_unexpected_admission_failure_is_recorded(gw) -> None:
    """Whatever refuses a stream at admission (here the limiter's store is broken), the
    request leaves one record, as a non-streaming request does."""

    class BrokenLimiter:
        async def acquire(self, *a: object) -> None:
            raise RuntimeError("counter store down")

        def debit_tokens(self, *a: object) -> None:
            pass

    gw.h.services.inference.admission.limits.limiter = BrokenLimiter()
    for body in ({**CHAT, "stream": True}, CHAT):
        r = await gw.post("/v1/chat/completions", json=body, headers=gw.hdr)
        assert r.status_code == 500, r.text
    assert [(x.status, x.http_status) for x in gw.sink.records] == [("error", 500)] * 2
