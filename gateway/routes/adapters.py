"""Adapter routes: the registry, lineage (adapter -> snapshot -> records -> contributors),
a contributor's adapters, and the admin API that trains an adapter on a snapshot.

Reading lineage needs a valid key of any scope: it is the public part of the trail (ids,
counts, the snapshot root, never record content). A record's content hash is shown only to
whoever may read the record (its contributor, the datanet's curators, an admin): an unsalted
hash of a short record would let anyone confirm a guessed text (`attribution.lineage`).
Training is admin-only and runs as a background job in this gateway process; the new adapter
is served once registered.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath

from attribution.datanets import is_datanet_name
from attribution.lineage import LineageService, RegisteredAdapter
from gateway.errors import BadRequest, NotFound, ServiceUnavailable
from gateway.protocol.common import check_model_name, decode_request
from gateway.routes.common import JSON, authorize, read_body, services_of
from gateway.routes.datanets import ANY_KEY, _authorize_any

_JOBS_KEY = "royalty.factory_jobs"
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
def _jobs(request: Request) -> dict[str, dict[str, Any]]:
    state = request.app.state
    if _JOBS_KEY not in state:
        state[_JOBS_KEY] = {}
    jobs: dict[str, dict[str, Any]] = state[_JOBS_KEY]
    return jobs


@post("/v1/adapters")
async def train_adapter(request: Request) -> Response[bytes]:
    """Start training an adapter on a snapshot (admin). 202 with a job to poll."""
    await authorize(request, "admin")
    services = services_of(request)
    if services.datanets is None or services.lineage is None or services.factory_base is None:
        raise ServiceUnavailable("The model factory is not available on this gateway.")
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
    job_id = "ftjob-" + secrets.token_hex(8)
    job: dict[str, Any] = {
        "id": job_id,
        "object": "adapter.training_job",
        "adapter": body.name,
        "datanet": body.datanet,
        "status": "running",
        "step": 0,
        "created": int(time.time()),
    }
    _jobs(request)[job_id] = job
    task = asyncio.create_task(_run_job(request, job, body), name=job_id)
    job["_task"] = task
    return _ok(_public(job), status=202)


async def _run_job(request: Request, job: dict[str, Any], body: TrainAdapterRequest) -> None:
    import dataclasses

    from factory.adapters import AdapterRecipe
    from royalty.admin import account_id
    from royalty.factory_jobs import train_on_snapshot

    services = services_of(request)
    assert services.datanets and services.lineage and services.factory_base
    recipe = AdapterRecipe()
    if body.steps is not None:
        recipe = dataclasses.replace(
            recipe, train=dataclasses.replace(recipe.train, steps=body.steps)
        )

    def on_step(done: int, loss: float) -> None:
        job["step"], job["loss"] = done, round(loss, 4)

    try:
        owner = await account_id(services.lineage.engine, body.owner)
        trained = await train_on_snapshot(
            services.datanets,
            services.lineage,
            services.factory_base,
            services.settings.resolved_adapters_dir,
            datanet=body.datanet,
            name=body.name,
            owner_account_id=owner,
            snapshot_id=body.snapshot,
            recipe=recipe,
            replace=body.replace,
            progress=False,
            on_step=on_step,
        )
        job.update(status="succeeded", result=adapter_json(trained.adapter))
    except Exception as e:  # reported on the job; the gateway keeps serving
        job.update(status="failed", error={"message": str(e), "type": type(e).__name__})


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


@get("/v1/adapters/jobs/{job_id:str}")
async def get_training_job(request: Request, job_id: FromPath[str]) -> Response[bytes]:
    await authorize(request, "admin")
    job = _jobs(request).get(job_id)
    if job is None:
        raise NotFound(f"No training job {job_id!r}.")
    return _ok(_public(job))


ROUTES = [
    list_adapters,
    get_adapter,
    adapter_lineage,
    adapter_records,
    my_adapters,
    train_adapter,
    get_training_job,
]
