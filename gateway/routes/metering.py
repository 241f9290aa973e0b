"""Contributor earnings, holds and statements: `GET /v1/me/earnings`, `GET /v1/me/holds`,
`GET /v1/me/statements/{month}`;
admin: `POST /v1/admin/credits`, `GET|POST /v1/admin/prices`.

Any valid key may call `/v1/me/earnings` and `/v1/me/statements`; `/v1/me/holds` needs the
`contributor` scope (holds are about contributed work). Each answers only for the key's own
account (the account comes from the key, never from the request). A month that is not closed, or a
closed month without a statement for the account, is a 404. Admin routes need the `admin`
scope; amounts are decimal strings of credits, parsed exactly.

`POST /v1/admin/credits` tops up an existing account (an unknown one is a 404 unless the body
says `"create": true`). With an `Idempotency-Key` header it credits at most once per key, as
Stripe does: the same key with the same body answers the first result again (with
`Idempotent-Replayed: true`), with another body a 422 `idempotency_key_reused`; concurrent
requests with one key credit once. Keys are kept at least 24 h (`TOPUP_KEY_RETENTION`), in the
same transaction as the top-up (`metering.ledger.book.PostgresLedger.top_up_once`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import unicodedata

import msgspec
from litestar import Request, Response, get, post

from core.accounts import account_id, existing_account_id
from gateway.auth import KeyInfo
from gateway.errors import ApiError, BadRequest, Forbidden, NotFound, ServiceUnavailable
from gateway.protocol.common import check_model_name, decode_request
from gateway.routes.common import JSON, authorize, read_body, services_of
from metering.catalog import CatalogError
from metering.ledger.book import IdempotencyConflict
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


class TopUpRequest(msgspec.Struct, kw_only=True):
    account: str
    amount: str
    create: bool = False
    """Create the account when there is none by that name (else: 404)."""


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


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
MAX_ACCOUNT_NAME = 200


class IdempotencyKeyReused(ApiError):
    status = 422
    code = "idempotency_key_reused"


def topup_fingerprint(account: str, micros: int, create: bool) -> bytes:
    """What an idempotency key is bound to: the request's meaning (account, exact amount,
    create), so `"2.5"` and `"2.50"` are the same request and another account is not."""
    doc = {"account": account, "amount_micros": micros, "create": create}
    return hashlib.sha256(msgspec.json.encode(doc)).digest()


def idempotency_key(request: Request) -> str | None:
    """The `Idempotency-Key` header: 1 to 255 printable ASCII characters, or absent."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in key):
        raise BadRequest(
            f"The {IDEMPOTENCY_HEADER} header must be 1 to {MAX_IDEMPOTENCY_KEY} printable "
            "ASCII characters.",
            param=IDEMPOTENCY_HEADER,
            code="invalid_idempotency_key",
        )
    return key


def _account_name(name: str) -> str:
    if not name.strip() or len(name) > MAX_ACCOUNT_NAME:
        raise BadRequest(
            f"account must be a name of 1 to {MAX_ACCOUNT_NAME} characters.", param="account"
        )
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise BadRequest("account must not contain control characters.", param="account")
    return name


@post("/v1/admin/credits")
async def add_credits(request: Request) -> Response[bytes]:
    await authorize(request, "admin")
    idem = idempotency_key(request)
    req = decode_request(await read_body(request), TopUpRequest)
    micros = _credits(req.amount, "amount")
    name = _account_name(req.account)
    service = _metering(request)
    if req.create:
        who = await account_id(service.engine, name)
    else:
        try:
            who = await existing_account_id(service.engine, name)
        except ValueError:
            raise NotFound(
                f'No account named {name!r}; send "create": true to create it.',
                param="account",
                code="account_not_found",
            ) from None
    memo = f"admin top-up {format_micros(micros)}"
    headers: dict[str, str] = {}
    if idem is None:
        txn = await service.ledger.top_up(who, micros, memo)
        available = (await service.ledger.balance("consumer", who)).available
    else:
        try:
            done = await service.ledger.top_up_once(
                idem, topup_fingerprint(name, micros, req.create), who, micros, memo
            )
        except IdempotencyConflict:
            raise IdempotencyKeyReused(
                f"This {IDEMPOTENCY_HEADER} was already used with a different request; "
                "use a new key for a new top-up.",
                param=IDEMPOTENCY_HEADER,
            ) from None
        txn, available = done.txn, done.available
        if done.replayed:
            headers["Idempotent-Replayed"] = "true"
    body = {"object": "credit.top_up", "account": name, "account_id": who, "transaction": txn,
            "available": format_micros(available)}  # fmt: skip
    return Response(msgspec.json.encode(body), media_type=JSON, status_code=201, headers=headers)


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
    check_model_name(req.base_model, "base_model")
    if req.adapter:
        check_model_name(req.adapter, "adapter")
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
