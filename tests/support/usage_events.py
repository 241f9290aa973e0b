"""One way for tests to make a usage event (`metering.usage.record.UsageRecord`).

The defaults are a plain successful completion on the `tiny` base model through the `recipes`
adapter, with no timing, output or attribution worth checking. The payer, the start and the token
counts have no default: the ledger's charge, the month and the payees follow from them, so each
test says them where its arithmetic can be read. Every other field of `UsageRecord` can be given.
"""

from __future__ import annotations

import datetime as dt

from metering.usage.record import Endpoint, UsageRecord, UsageStatus


def usage_event(
    request_id: str,
    *,
    account_id: int,
    started_at: dt.datetime,
    prompt_tokens: int,
    completion_tokens: int,
    adapter: str | None = "recipes",
    base_model: str = "tiny",
    model: str | None = None,
    key_id: int = 1,
    endpoint: Endpoint = "completions",
    status: UsageStatus = "ok",
    http_status: int = 200,
    total_ms: float = 1.0,
    ttft_ms: float | None = None,
    output_sha256: str | None = None,
    error_type: str | None = None,
    engine: str | None = None,
    attribution: str | None = None,
    prompt_digest: str | None = None,
) -> UsageRecord:
    """A usage event; `model` (the name the client asked for) defaults to the adapter's name, or
    to the base model's when there is no adapter: the names clients ask for them by."""
    return UsageRecord(
        request_id=request_id,
        account_id=account_id,
        key_id=key_id,
        endpoint=endpoint,
        model=model if model is not None else adapter or base_model,
        base_model=base_model,
        adapter=adapter,
        status=status,
        http_status=http_status,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        started_at=started_at,
        total_ms=total_ms,
        ttft_ms=ttft_ms,
        output_sha256=output_sha256,
        error_type=error_type,
        engine=engine,
        attribution=attribution,
        prompt_digest=prompt_digest,
    )
