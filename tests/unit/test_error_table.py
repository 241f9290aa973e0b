"""The gateway's one error table: every domain error has an answer, no row hides a later one,
and serving's and metering's exceptions answer as the inference service always did."""

from __future__ import annotations

import msgspec
import pytest

from attribution import errors as datanet
from attribution.results import SubmissionResult
from core import errors as kinds
from gateway.error_table import ERROR_TABLE, api_error
from metering.budgets.store import InsufficientCredit
from metering.ledger.book import IdempotencyConflict
from metering.usage.recorder import UsageNotRecorded
from serving.engine import EngineHTTPError, EngineUnavailable
from serving.placement import AdapterLoadFailed, AdapterSlotsBusy
from serving.pool import NoEngineAvailable
from serving.registry import UnknownModel


def _classes(c: type[BaseException] | tuple[type[BaseException], ...]) -> tuple[type, ...]:
    return c if isinstance(c, tuple) else (c,)


def test_no_row_hides_a_later_one() -> None:
    for i, early in enumerate(ERROR_TABLE):
        if early.when is not None:
            continue
        for late in ERROR_TABLE[i + 1 :]:
            hidden = all(issubclass(c, _classes(early.catches)) for c in _classes(late.catches))
            assert not hidden, f"{late} can never match: {early} comes first"


@pytest.mark.parametrize(
    "kind", [kinds.Invalid, kinds.NotFound, kinds.Forbidden, kinds.Conflict,
             kinds.RateLimited, kinds.QuotaExceeded, kinds.Unavailable, kinds.DomainError],
)  # fmt: skip
def test_every_kind_has_an_answer(kind: type[kinds.DomainError]) -> None:
    err = api_error(kind("x"))
    assert err is not None and err.status in (400, 402, 403, 404, 409, 429, 503)


def answer(exc: BaseException) -> tuple[int, dict[str, object], dict[str, str]]:
    err = api_error(exc)
    assert err is not None
    return err.status, msgspec.json.decode(err.body())["error"], err.headers


def test_serving_and_metering_answer_as_before() -> None:
    unavailable = {"type": "server_error", "param": None, "code": "engine_unavailable",
                   "message": "The model engine is unavailable right now; please retry shortly."}  # fmt: skip
    for exc in (EngineUnavailable("e0: refused"), NoEngineAvailable("royalty-tiny"),
                EngineHTTPError(500, b'{"error": {"message": "boom"}}')):  # fmt: skip
        assert answer(exc) == (503, unavailable, {"Retry-After": "2"})
    refused = EngineHTTPError(400, b'{"error": {"message": "too long"}}')
    assert answer(refused) == (400, {"message": "too long", "type": "invalid_request_error",
                                     "param": None, "code": "invalid_request"}, {})  # fmt: skip
    status, body, headers = answer(AdapterSlotsBusy("legal", 30))
    assert (status, body["code"], headers) == (503, "adapter_slots_busy", {"Retry-After": "5"})
    assert "`legal`" in str(body["message"])
    status, body, headers = answer(AdapterLoadFailed("legal", "bad rank"))
    assert (status, body["code"], headers) == (503, "adapter_unavailable", {"Retry-After": "10"})
    assert answer(UnknownModel("gpt-17")) == (404, {
        "message": "The model `gpt-17` does not exist.", "type": "invalid_request_error",
        "param": "model", "code": "model_not_found"}, {})  # fmt: skip
    status, body, _ = answer(UsageNotRecorded("r1"))
    assert (status, body["code"]) == (503, "usage_unavailable")
    status, body, _ = answer(InsufficientCredit(1, needed=500, available=20))
    assert (status, body["type"], body["code"]) == (402, "insufficient_quota", "insufficient_quota")
    assert "20 micro-credits available, up to 500 needed" in str(body["message"])
    assert answer(IdempotencyConflict("k"))[0] == 409


def test_rejected_records_answer_with_their_rule() -> None:
    def rejected(reason: str) -> SubmissionResult:
        return SubmissionResult(index=0, status="rejected", reason=reason, detail="d")

    assert answer(datanet.RecordRejected(rejected("too_large")))[:2] == (413, {
        "message": "Record rejected (too_large): d", "type": "invalid_request_error",
        "param": None, "code": "too_large"})  # fmt: skip
    assert answer(datanet.RecordRejected(rejected("too_short")))[0] == 400
    assert answer(datanet.DuplicateRecord(rejected("duplicate")))[0] == 409
    status, body, headers = answer(datanet.RateLimited(rejected("rate_limited")))
    assert (status, body["type"], body["code"]) == (429, "rate_limit_error", "rate_limited")
    assert headers == {"Retry-After": "60"}
    assert answer(datanet.Forbidden("no"))[:2] == (403, {
        "message": "no", "type": "permission_error", "param": None, "code": "forbidden"})  # fmt: skip


def test_unknown_exceptions_have_no_answer() -> None:
    assert api_error(RuntimeError("bug")) is None
