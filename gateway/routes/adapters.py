"""Adapter routes: the registry, lineage (adapter -> snapshot -> records -> contributors),
a contributor's adapters, and the admin API that trains an adapter on a snapshot.

Reading lineage needs a valid key of any scope: it is the public part of the trail (ids,
counts, the snapshot root, never record content). A record's content hash is shown only to
whoever may read the record (its contributor, the datanet's curators, an admin): an unsalted
hash of a short record would let anyone confirm a guessed text (`attribution.lineage`).
Training is admin-only: the gateway validates the request and queues a job in Postgres
(`attribution.training_jobs`); a training worker process trains and registers the adapter, and
every gateway serves it once registered (`AdapterSync`) and reads the job from the queue.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath

from attribution.datanets import is_datanet_name
from attribution.lineage import LineageService, RegisteredAdapter
from attribution.training_jobs import KeyReused, TrainingJob, TrainingRequest, is_job_id
from gateway.errors import BadRequest, NotFound, ServiceUnavailable
from gateway.protocol.common import check_model_name, decode_request
from gateway.routes.common import JSON, authorize, read_body, services_of
from gateway.routes.datanets import ANY_KEY, _authorize_any
from gateway.routes.metering import IDEMPOTENCY_HEADER, IdempotencyKeyReused, idempotency_key

_MAX_PAGE = 10_000


_OWNER = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{64}")


class TrainAdapterRequest(msgspec.Struct, kw_only=True):
    datanet: str
    name: str
    owner: str
    snapshot: str | None = None
    replace: bool = False
    steps: int | None = None


def _svc(request: Request) -> LineageService:
    svc = services_of(request).lineage
    if svc is None:
        raise ServiceUnavailable("Adapters are not available on this gateway.", code="unavailable")
    return svc


def _ok(payload: Any, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(payload), status_code=status, media_type=JSON)


def adapter_json(a: RegisteredAdapter) -> dict[str, Any]:
    return {
        "id": a.name,
        "object": "adapter",
        "base_model": a.base_model,
        "owner": a.owner,
        "datanet": a.datanet,
        "snapshot_id": a.snapshot_id,
        "record_count": a.record_count,
        "weights_sha256": a.weights_sha256,
        "lineage_sha256": a.lineage_sha256,
        "price": {"input_micros_per_mtok": a.price_input_micros,
                  "output_micros_per_mtok": a.price_output_micros},
        "status": a.status,
        "created": a.created,
    }  # fmt: skip


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be an integer from {lo} to {hi}.", param=name)
    return value


@get("/v1/adapters")
async def list_adapters(request: Request) -> Response[bytes]:
    await _authorize_any(request, ANY_KEY)
    adapters = await _svc(request).active()
    return _ok({"object": "list", "data": [adapter_json(a) for a in adapters]})


@get("/v1/adapters/{name:str}")
async def get_adapter(request: Request, name: FromPath[str]) -> Response[bytes]:
    await _authorize_any(request, ANY_KEY)
    return _ok(adapter_json(await _svc(request).get(name)))


@get("/v1/adapters/{name:str}/lineage")
async def adapter_lineage(request: Request, name: FromPath[str]) -> Response[bytes]:
    await _authorize_any(request, ANY_KEY)
    return _ok(await _svc(request).lineage(name))


@get("/v1/adapters/{name:str}/records")
async def adapter_records(request: Request, name: FromPath[str]) -> Response[bytes]:
    """The adapter's training records (snapshot order), paged by position; `record_hash`
    only on the records the caller may read."""
    key = await _authorize_any(request, ANY_KEY)
    after = _int_param(request, "after", 0, 0, 2**31 - 1)
    limit = _int_param(request, "limit", 1000, 1, _MAX_PAGE)
    viewer = None if "admin" in key.scopes else key.account_id
    rows = await _svc(request).records(name, after=after, limit=limit, viewer=viewer)
    return _ok(
        {
            "object": "list",
            "data": [{"object": "adapter.record", **msgspec.to_builtins(r)} for r in rows],
            "next_after": rows[-1].position + 1 if len(rows) == limit else None,
        }
    )


@get("/v1/me/adapters")
async def my_adapters(request: Request) -> Response[bytes]:
    """Adapters trained on the caller's records, with how many of them each used."""
    key = await _authorize_any(request, ANY_KEY)
    rows = await _svc(request).adapters_of_contributor(key.account_id)
    return _ok({"object": "list", "data": [msgspec.to_builtins(r) for r in rows]})


# --- admin: training jobs --------------------------------------------------------------------
def job_json(job: TrainingJob) -> dict[str, Any]:
    """A training job as the API shows it: `status` is queued, running, succeeded or failed;
    `loss` once a step ran, `result` (the adapter) on success, `error` on failure."""
    out: dict[str, Any] = {
        "id": job.id,
        "object": "adapter.training_job",
        "adapter": job.request.adapter,
        "datanet": job.request.datanet,
        "status": job.state,
        "step": job.step,
        "created": int(job.created_at.timestamp()),
    }
    if job.loss is not None:
        out["loss"] = round(job.loss, 4)
    if job.result is not None:
        out["result"] = adapter_json(job.result)
    if job.state == "failed":
        out["error"] = {"message": job.error, "type": job.error_type}
    return out


@post("/v1/adapters")
async def train_adapter(request: Request) -> Response[bytes]:
    """Queue training an adapter on a snapshot (admin): 202 with a job to poll, which a
    training worker (`royalty training worker`) runs. With an `Idempotency-Key` header a
    retried request gets the same job (`Idempotent-Replayed: true`)."""
    await authorize(request, "admin")
    services = services_of(request)
    if services.datanets is None or services.training_jobs is None:
        raise ServiceUnavailable("The model factory is not available on this gateway.")
    idem = idempotency_key(request)
    body = decode_request(await read_body(request), TrainAdapterRequest)
    if body.steps is not None and not 1 <= body.steps <= 100_000:
        raise BadRequest("'steps' must be from 1 to 100000.", param="steps")
    # Checked before the 202: a job that can only fail in the background is not a job.
    check_model_name(body.name, "name")
    if not _OWNER.fullmatch(body.owner) or not body.owner.strip():
        raise BadRequest(
            "'owner' must be an account name of 1 to 200 printable characters.", param="owner"
        )
    if body.snapshot is not None and not _SNAPSHOT_ID.fullmatch(body.snapshot):
        raise NotFound(f"No snapshot {body.snapshot[:80]!r}.")
    if not is_datanet_name(body.datanet):
        raise NotFound(f"No datanet named {body.datanet[:80]!r}.")
    await services.datanets.get_datanet_by_name(body.datanet)  # 404 when there is none
    wanted = TrainingRequest(
        datanet=body.datanet, adapter=body.name, owner=body.owner, snapshot_id=body.snapshot,
        steps=body.steps, replace=body.replace,
    )  # fmt: skip
    try:
        queued = await services.training_jobs.enqueue(wanted, idempotency_key=idem)
    except KeyReused:
        raise IdempotencyKeyReused(
            f"This {IDEMPOTENCY_HEADER} was already used with a different request; "
            "use a new key for a new training job.",
            param=IDEMPOTENCY_HEADER,
        ) from None
    headers = {"Idempotent-Replayed": "true"} if queued.replayed else {}
    return Response(
        msgspec.json.encode(job_json(queued.job)), status_code=202, media_type=JSON,
        headers=headers,
    )  # fmt: skip


@get("/v1/adapters/jobs/{job_id:str}")
async def get_training_job(request: Request, job_id: FromPath[str]) -> Response[bytes]:
    """A training job, from the queue: any gateway answers for any job."""
    await authorize(request, "admin")
    jobs = services_of(request).training_jobs
    job = await jobs.get(job_id) if jobs is not None and is_job_id(job_id) else None
    if job is None:
        raise NotFound(f"No training job {job_id[:80]!r}.")
    return _ok(job_json(job))


ROUTES = [
    list_adapters,
    get_adapter,
    adapter_lineage,
    adapter_records,
    my_adapters,
    train_adapter,
    get_training_job,
]
