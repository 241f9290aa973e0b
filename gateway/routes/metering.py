"""Contributor earnings and statements: `GET /v1/me/earnings`, `GET /v1/me/statements/{month}`.

Any valid key may call them, and each answers only for the key's own account (the account
comes from the key, never from the request). A month that is not closed, or a closed month
without a statement for the account, is a 404.
"""

from __future__ import annotations

import msgspec
from litestar import Request, Response, get

from gateway.auth import KeyInfo
from gateway.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable
from gateway.routes.common import JSON, authorize, services_of
from metering.money import parse_month
from metering.service import MeteringService

ANY_KEY = ("inference", "contributor", "curator")


async def _own_key(request: Request) -> KeyInfo:
    for scope in ANY_KEY[:-1]:
        try:
            return await authorize(request, scope)
        except Forbidden:
            continue
    return await authorize(request, ANY_KEY[-1])


def _metering(request: Request) -> MeteringService:
    service = services_of(request).metering
    if service is None:
        raise ServiceUnavailable("Metering is not configured.", code="metering_unavailable")
    return service


@get("/v1/me/earnings", media_type=JSON)
async def my_earnings(request: Request) -> Response[bytes]:
    key = await _own_key(request)
    earnings = await _metering(request).earnings(key.account_id)
    return Response(msgspec.json.encode(earnings), media_type=JSON)


@get("/v1/me/statements/{month:str}", media_type=JSON)
async def my_statement(request: Request, month: str) -> Response[bytes]:
    key = await _own_key(request)
    try:
        when = parse_month(month)
    except ValueError as e:
        raise BadRequest(str(e), param="month", code="invalid_month") from None
    statement = await _metering(request).statement(key.account_id, when)
    if statement is None:
        raise NotFound(f"No statement for your account in {month} (the month may not be closed).")
    return Response(msgspec.json.encode(statement), media_type=JSON)


ROUTES = [my_earnings, my_statement]
