"""Contributor earnings, holds and statements: `GET /v1/me/earnings`, `GET /v1/me/holds`,
`GET /v1/me/statements/{month}`;
admin: `POST /v1/admin/credits`, `GET|POST /v1/admin/prices`.

Any valid key may call `/v1/me/earnings` and `/v1/me/statements`; `/v1/me/holds` needs the
`contributor` scope (holds are about contributed work). Each answers only for the key's own
account (the account comes from the key, never from the request). A month that is not closed, or a
closed month without a statement for the account, is a 404. Admin routes need the `admin`
scope; amounts are decimal strings of credits, parsed exactly.
"""

from __future__ import annotations

import datetime as dt

import msgspec
from litestar import Request, Response, get, post

from gateway.auth import KeyInfo
from gateway.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable
from gateway.protocol.common import decode_request
from gateway.routes.common import JSON, authorize, read_body, services_of
from metering.catalog import CatalogError
from metering.money import MoneyError, format_micros, parse_credits, parse_month
from metering.pricing import Price
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


@get("/v1/me/holds", media_type=JSON)
async def my_holds(request: Request) -> Response[bytes]:
    """What is withheld from the caller's own earnings and why (scope `contributor`)."""
    key = await authorize(request, "contributor")
    holds = await _metering(request).holds(key.account_id)
    return Response(msgspec.json.encode(holds), media_type=JSON)


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


class TopUp(msgspec.Struct, kw_only=True):
    account: str
    amount: str


class SetPrice(msgspec.Struct, kw_only=True):
    base_model: str
    input: str
    """Credits per million input tokens (decimal string)."""
    output: str
    adapter: str = ""
    effective_from: dt.datetime | None = None


def _credits(text: str, param: str, *, allow_zero: bool = False) -> int:
    try:
        return parse_credits(text, allow_zero=allow_zero)
    except MoneyError as e:
        raise BadRequest(str(e), param=param, code="invalid_amount") from None


def _json(doc: object, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(doc), media_type=JSON, status_code=status)


@post("/v1/admin/credits")
async def add_credits(request: Request) -> Response[bytes]:
    await authorize(request, "admin")
    req = decode_request(await read_body(request), TopUp)
    micros = _credits(req.amount, "amount")
    from gateway.admin import account_id  # the gateway owns `accounts`

    service = _metering(request)
    try:
        who = await account_id(service.engine, req.account)
    except ValueError as e:
        raise BadRequest(str(e), param="account") from None
    txn = await service.ledger.top_up(who, micros, f"admin top-up {req.amount}")
    balance = await service.ledger.balance("consumer", who)
    return _json(
        {"object": "credit.top_up", "account": req.account, "account_id": who, "transaction": txn,
         "available": format_micros(balance.available)},
        201,
    )  # fmt: skip


def _price_json(p: Price) -> dict[str, object]:
    return {
        "object": "price",
        "version": p.id,
        "base_model": p.base_model,
        "adapter": p.adapter or None,
        "input_per_million": format_micros(p.input_micros_per_m),
        "output_per_million": format_micros(p.output_micros_per_m),
        "effective_from": p.effective_from.isoformat(),
    }


@get("/v1/admin/prices", media_type=JSON)
async def list_prices(request: Request) -> Response[bytes]:
    await authorize(request, "admin")
    prices = await _metering(request).catalog.prices()
    return _json({"object": "list", "data": [_price_json(p) for p in prices]})


@post("/v1/admin/prices")
async def set_price(request: Request) -> Response[bytes]:
    await authorize(request, "admin")
    req = decode_request(await read_body(request), SetPrice)
    pin = _credits(req.input, "input", allow_zero=True)
    pout = _credits(req.output, "output", allow_zero=True)
    if req.effective_from is not None and req.effective_from.tzinfo is None:
        raise BadRequest("effective_from needs a time zone.", param="effective_from")
    try:
        price = await _metering(request).catalog.set_price(
            req.base_model, req.adapter, pin, pout, req.effective_from
        )
    except CatalogError as e:
        raise BadRequest(str(e), code="price_conflict") from None
    return _json(_price_json(price), 201)


ROUTES = [my_earnings, my_holds, my_statement, add_credits, list_prices, set_price]
