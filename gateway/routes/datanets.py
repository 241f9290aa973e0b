"""Datanet routes: datanets, contributions (single and bulk), curation, snapshots, proofs.

Thin: every route authorizes first, decodes, calls `DatanetService` and renders its answer.
The domain decides who may do what to a datanet (its owner and curators) and to a record (its
contributor); the scope only admits the key to the route. An `admin` key acts as a trusted
caller (the service's `None` actor). Domain exceptions (`attribution.errors`) are rendered by
one handler in `gateway/app.py`.

Path ids are taken as strings and parsed after authorization, so an unauthenticated call gets
a 401 whatever the path holds. Nothing that the database cannot hold reaches it: ids past
`bigint` and snapshot ids that are not 64 hex digits are 404s, text with a NUL or a lone
surrogate is a 400 (record fields answer per record, `invalid_text`), JSON nested too deeply
is a 400.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath

from attribution.datanets import Datanet
from attribution.records import QualityPolicy, SubmissionResult
from attribution.service import DatanetService
from gateway.auth import KeyInfo
from gateway.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable
from gateway.protocol.common import decode_request
from gateway.routes.common import JSON, authorize, read_body, services_of

ANY_KEY = ("inference", "contributor", "curator")
"""Reading the catalogue (datanets, their snapshots) needs a valid key of any scope."""
RECORD_READERS = ("contributor", "curator")
BULK_LINES_KEY = "royalty.bulk_lines"
"""ASGI scope key: the JSONL line number of each item of a bulk upload (for error bodies)."""
_MAX_ID = 2**63 - 1
"""Ids are PostgreSQL `bigint`s."""
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{64}")


class CreateDatanet(msgspec.Struct, kw_only=True):
    name: str
    licence: str
    description: str = ""
    acceptance: Literal["open", "curated"] = "open"
    curators: list[int] = []
    policy: QualityPolicy | None = None


class DecisionRequest(msgspec.Struct, kw_only=True):
    approve: bool
    reason: str


# --- helpers --------------------------------------------------------------------------------
async def _authorize_any(request: Request, scopes: tuple[str, ...]) -> KeyInfo:
    for scope in scopes[:-1]:
        try:
            return await authorize(request, scope)
        except Forbidden:
            continue
    try:
        return await authorize(request, scopes[-1])
    except Forbidden:
        raise Forbidden(
            f"This API key lacks one of the scopes {list(scopes)} required for this route."
        ) from None


def _svc(request: Request) -> DatanetService:
    svc = services_of(request).datanets
    if svc is None:
        raise ServiceUnavailable("Datanets are not available on this gateway.", code="unavailable")
    return svc


def _actor(key: KeyInfo) -> int | None:
    """The acting account for the domain's checks; `None` (trusted) for an admin key."""
    return None if "admin" in key.scopes else key.account_id


def _id(value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= _MAX_ID or str(n) != value:
        raise NotFound(f"No {what} {value[:64]!r}.")
    return n


def _snapshot_id(value: str) -> str:
    if not _SNAPSHOT_ID.fullmatch(value):
        raise NotFound(f"No snapshot {value[:80]!r}.")
    return value


def _ok(payload: Any, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(payload), status_code=status, media_type=JSON)


def datanet_json(d: Datanet) -> dict[str, Any]:
    return {
        "id": d.id,
        "object": "datanet",
        "name": d.name,
        "description": d.description,
        "licence": d.licence,
        "acceptance": d.acceptance_mode,
        "owner": d.owner_account_id,
        "curators": d.curators,
        "policy": d.policy,
        "created_at": d.created_at,
    }


def result_json(r: SubmissionResult, line: int | None = None) -> dict[str, Any]:
    """One submission result as the API shows it: the record id as `id`."""
    out: dict[str, Any] = {"object": "datanet.submission", "id": r.record_id, "index": r.index}
    if line is not None:
        out["line"] = line
    out.update(msgspec.structs.asdict(r))
    del out["record_id"]
    return {k: v for k, v in out.items() if v is not None or k == "id"}


def bulk_results_json(
    results: list[SubmissionResult], lines: list[int] | None
) -> list[dict[str, Any]]:
    return [
        result_json(r, lines[r.index] if lines is not None and r.index < len(lines) else None)
        for r in results
    ]


def _summary(results: list[SubmissionResult]) -> dict[str, Any]:
    counts = {"accepted": 0, "pending": 0, "flagged": 0, "rejected": 0}
    reasons: dict[str, int] = {}
    for r in results:
        counts[r.status] += 1
        if r.status == "rejected" and r.reason:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return {**counts, "rejected_reasons": reasons}


def _split_bulk(body: bytes) -> tuple[list[bytes], list[int] | None]:
    """A JSON array of records, or JSONL (one record a line; blank lines skipped). Returns the
    items (raw JSON each, validated by the service) and, for JSONL, their line numbers."""
    if not body.strip():
        raise BadRequest("The request body is empty; expected JSONL or a JSON array of records.")
    if body.lstrip()[:1] == b"[":
        try:
            raws = msgspec.json.decode(body, type=list[msgspec.Raw])
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            raise BadRequest(
                f"We could not parse the JSON array of records ({e}).", code="invalid_json"
            ) from None
        except RecursionError:
            raise BadRequest(
                "The JSON array of records is nested too deeply.", code="invalid_json"
            ) from None
        return [bytes(r) for r in raws], None
    items: list[bytes] = []
    lines: list[int] = []
    for n, line in enumerate(body.split(b"\n"), start=1):
        if line.strip():
            items.append(line.rstrip(b"\r"))
            lines.append(n)
    return items, lines


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("true", "1", "yes", ""):
        return True
    if value in ("false", "0", "no"):
        return False
    raise BadRequest(f"Invalid value for '{name}': expected true or false.", param=name)


# --- datanets -------------------------------------------------------------------------------
@get("/v1/datanets")
async def list_datanets(request: Request) -> Response[bytes]:
    await _authorize_any(request, ANY_KEY)
    datanets = await _svc(request).list_datanets()
    return _ok({"object": "list", "data": [datanet_json(d) for d in datanets]})


@post("/v1/datanets")
async def create_datanet(request: Request) -> Response[bytes]:
    key = await authorize(request, "curator")
    req = decode_request(await read_body(request), CreateDatanet)
    d = await _svc(request).create_datanet(
        req.name,
        key.account_id,
        req.licence,
        req.acceptance,
        req.description,
        curators=req.curators,
        policy=req.policy,
    )
    return _ok(datanet_json(d), 201)


@get("/v1/datanets/{datanet_id:str}")
async def get_datanet(request: Request, datanet_id: FromPath[str]) -> Response[bytes]:
    await _authorize_any(request, ANY_KEY)
    d = await _svc(request).get_datanet(_id(datanet_id, "datanet"))
    return _ok(datanet_json(d))


# --- contributions --------------------------------------------------------------------------
@post("/v1/datanets/{datanet_id:str}/records")
async def submit_record(request: Request, datanet_id: FromPath[str]) -> Response[bytes]:
    key = await authorize(request, "contributor")
    did = _id(datanet_id, "datanet")
    body = await read_body(request)
    if not body:
        raise BadRequest("The request body is empty; expected a JSON record.")
    result = await _svc(request).submit(did, key.account_id, body)
    out = result_json(result)
    del out["index"]
    return _ok(out, 201)


@post("/v1/datanets/{datanet_id:str}/records/bulk")
async def submit_bulk(request: Request, datanet_id: FromPath[str]) -> Response[bytes]:
    key = await authorize(request, "contributor")
    did = _id(datanet_id, "datanet")
    atomic = _flag(request, "atomic")
    items, lines = _split_bulk(await read_body(request))
    request.scope[BULK_LINES_KEY] = lines  # type: ignore[literal-required]
    results = await _svc(request).submit_bulk(did, key.account_id, items, atomic=atomic)
    return _ok(
        {
            "object": "list",
            "atomic": atomic,
            "summary": _summary(results),
            "data": bulk_results_json(results, lines),
        }
    )


@get("/v1/datanets/{datanet_id:str}/records/pending")
async def pending_records(request: Request, datanet_id: FromPath[str]) -> Response[bytes]:
    key = await authorize(request, "curator")
    records = await _svc(request).pending(_id(datanet_id, "datanet"), _actor(key))
    return _ok({"object": "list", "data": records})


@get("/v1/datanets/{datanet_id:str}/records/{record_id:str}")
async def get_record(
    request: Request, datanet_id: FromPath[str], record_id: FromPath[str]
) -> Response[bytes]:
    key = await _authorize_any(request, RECORD_READERS)
    did, rid = _id(datanet_id, "datanet"), _id(record_id, "record")
    record = await _svc(request).get_record(rid, _actor(key))
    if record.datanet_id != did:
        raise NotFound(f"No record {rid} in datanet {did}.")
    return _ok(record)


@post("/v1/datanets/{datanet_id:str}/records/{record_id:str}/decision")
async def decide_record(
    request: Request, datanet_id: FromPath[str], record_id: FromPath[str]
) -> Response[bytes]:
    key = await authorize(request, "curator")
    did, rid = _id(datanet_id, "datanet"), _id(record_id, "record")
    req = decode_request(await read_body(request), DecisionRequest)
    svc = _svc(request)
    record = await svc.get_record(rid, _actor(key))
    if record.datanet_id != did:
        raise NotFound(f"No record {rid} in datanet {did}.")
    decision = await svc.decide(
        rid, key.account_id, req.approve, req.reason, trusted="admin" in key.scopes
    )
    return _ok(decision)


@get("/v1/me/records")
async def my_records(request: Request) -> Response[bytes]:
    key = await authorize(request, "contributor")
    raw = request.query_params.get("datanet")
    did = None
    if raw is not None:
        try:
            did = int(raw)
        except ValueError:
            did = -1
        if not 0 <= did <= _MAX_ID:
            raise BadRequest("Invalid value for 'datanet': expected an id.", param="datanet")
    records = await _svc(request).records_of(key.account_id, key.account_id, did)
    return _ok({"object": "list", "data": records})


# --- snapshots ------------------------------------------------------------------------------
@post("/v1/datanets/{datanet_id:str}/snapshots")
async def publish_snapshot(request: Request, datanet_id: FromPath[str]) -> Response[bytes]:
    key = await authorize(request, "curator")
    snap = await _svc(request).publish(_id(datanet_id, "datanet"), _actor(key))
    return _ok(snap, 201)


@get("/v1/datanets/{datanet_id:str}/snapshots")
async def list_snapshots(request: Request, datanet_id: FromPath[str]) -> Response[bytes]:
    await _authorize_any(request, ANY_KEY)
    snaps = await _svc(request).snapshots(_id(datanet_id, "datanet"))
    return _ok({"object": "list", "data": snaps})


@get("/v1/snapshots/{snapshot_id:str}/proof/{record_id:str}")
async def inclusion_proof(
    request: Request, snapshot_id: FromPath[str], record_id: FromPath[str]
) -> Response[bytes]:
    key = await _authorize_any(request, RECORD_READERS)
    proof = await _svc(request).inclusion_proof(
        _snapshot_id(snapshot_id), _id(record_id, "record"), _actor(key)
    )
    return _ok(proof)


ROUTES = [
    list_datanets,
    create_datanet,
    get_datanet,
    submit_record,
    submit_bulk,
    pending_records,
    get_record,
    decide_record,
    my_records,
    publish_snapshot,
    list_snapshots,
    inclusion_proof,
]
