"""Attribution routes: one response's full attribution record (for the key's account that
made the request, and for admins), and the responses that credited the caller's records
(for contributors; other people's requests show only ids, weights and record ids).

The record carries the inline (span) attribution as the response did, and `influence`: the
state of its gradient influence job and, once done, the refined weights the ledger was
adjusted to (`null` when no job was queued, e.g. a base-model response)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath

from attribution.influence.queue import PostgresInfluenceQueue
from gateway.errors import BadRequest, NotFound, ServiceUnavailable
from gateway.routes.common import JSON, authorize, services_of
from gateway.routes.datanets import ANY_KEY, _authorize_any
from metering.usage.queries import UsageQueries


def _queries(request: Request) -> UsageQueries:
    q = services_of(request).usage_queries
    if q is None:
        raise ServiceUnavailable("Attributions are not available on this gateway.")
    return q


_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@get("/v1/attributions/{request_id:str}")
async def get_attribution(request: Request, request_id: FromPath[str]) -> Response[bytes]:
    key = await _authorize_any(request, (*ANY_KEY, "admin"))
    # An id no request can have (the gateway makes them: `req_` and hex) is not looked up.
    event = (
        await _queries(request).attribution(request_id)
        if _REQUEST_ID.fullmatch(request_id)
        else None
    )
    # Someone else's request is as absent as an unknown one: ids are not secrets to probe.
    if event is None or ("admin" not in key.scopes and event.account_id != key.account_id):
        raise NotFound(
            f"No attribution for request {request_id[:80]!r} (usage is recorded within a "
            "second of the response)."
        )
    body = {
        "object": "attribution.record",
        **msgspec.to_builtins(event),
        "influence": await _influence(request, request_id),
    }
    return Response(msgspec.json.encode(body), media_type=JSON)


async def _influence(request: Request, request_id: str) -> dict[str, Any] | None:
    lineage = services_of(request).lineage
    if lineage is None:
        return None
    job = await PostgresInfluenceQueue(lineage.engine).view(request_id)
    if job is None:
        return None
    out: dict[str, Any] = {"state": job.state, "method": None, "top_records": [],
                           "contributors": []}  # fmt: skip
    if job.result is not None:
        out.update(
            method=job.result.method,
            weights_version=job.result.weights_version,
            weights_method=job.result.refined_method,
            top_records=job.result.top_records,
            contributors=job.result.contributors,
            adjusted=job.result.adjustment_txn is not None,
        )
    if job.note or job.last_error:
        out["reason"] = job.note or job.last_error
    return out


@get("/v1/me/attributions")
async def my_credits(request: Request) -> Response[bytes]:
    key = await authorize(request, "contributor")
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise BadRequest("'limit' must be an integer from 1 to 1000.", param="limit")
    credits = await _queries(request).credits_of(key.account_id, limit=int(raw))
    body = {"object": "list", "data": [msgspec.to_builtins(c) for c in credits]}
    return Response(msgspec.json.encode(body), media_type=JSON)


ROUTES = [get_attribution, my_credits]
