"""The OpenAI-compatible routes: chat completions, completions, models."""

from __future__ import annotations

from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway.inference import CallContext
from gateway.inference.endpoints import CHAT, COMPLETIONS, EndpointSpec
from gateway.middleware import request_id_of
from gateway.protocol.common import decode_request
from gateway.protocol.models import Model, ModelList
from gateway.routes.common import JSON, authorize, read_body, services_of
from gateway.streaming import SSEStream
from serving.registry import ModelRegistry

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _serve(request: Request, spec: EndpointSpec) -> Response:
    await authorize(request, "inference")
    req = decode_request(await read_body(request), spec.request_type)
    svc = services_of(request)
    key = request.scope["royalty.key"]  # type: ignore[typeddict-item]
    ctx = CallContext(request_id_of(request.scope), key, spec.name)
    if req.stream:
        frames = await svc.inference.open_stream(ctx, req)
        return SSEStream(frames, headers=SSE_HEADERS)
    return Response(await svc.inference.complete(ctx, req), media_type=JSON)


@post(CHAT.path, status_code=200)
async def chat_completions(request: Request) -> Response:
    return await _serve(request, CHAT)


@post(COMPLETIONS.path, status_code=200)
async def completions(request: Request) -> Response:
    return await _serve(request, COMPLETIONS)


def _models(registry: ModelRegistry) -> list[Model]:
    out = [
        Model(id=b.name, created=b.created, owned_by=b.owned_by, object="model")
        for b in registry.bases
    ]
    out += [
        Model(
            id=a.name,
            created=a.created,
            owned_by=a.owned_by,
            object="model",
            parent=a.base,
            root=a.base,
        )
        for a in registry.adapters
    ]
    return out


@get("/v1/models")
async def list_models(request: Request) -> ModelList:
    await authorize(request, "inference")
    return ModelList(data=_models(services_of(request).registry))


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: FromPath[str]) -> Model:
    await authorize(request, "inference")
    name = model_id.lstrip("/")
    registry = services_of(request).registry
    registry.resolve(name)  # an unknown model is a 404 (`gateway.error_table`)
    return next(m for m in _models(registry) if m.id == name)


ROUTES = [chat_completions, completions, list_models, retrieve_model]
