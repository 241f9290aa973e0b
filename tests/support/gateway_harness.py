"""An in-process gateway over the fake engine, an in-memory key store and an in-memory usage
sink: the fast harness for the HTTP surface."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.app import create_app
from gateway.auth import Authenticator, InMemoryKeyStore
from gateway.config import HttpSettings, RateLimitSettings
from gateway.container import Services
from gateway.inference import InferenceService
from gateway.ratelimit import RateLimiter
from metering.usage.record import UsageRecord
from serving.fake import FakeEngine
from serving.placement import AdapterPlacement
from serving.pool import EngineHandle, EnginePool
from serving.registry import Adapter, BaseModel, ModelRegistry


@dataclass
class Harness:
    engine: FakeEngine
    keys: InMemoryKeyStore
    services: Services
    records: list[UsageRecord] = field(default_factory=list)

    def app(self):  # type: ignore[no-untyped-def]
        return create_app(self.services)

    async def key(self, *scopes: str, account: str = "acme", rpm: int | None = None,
                  tpm: int | None = None) -> str:  # fmt: skip
        k, _ = await self.keys.create(account, frozenset(scopes or ("inference",)), rpm, tpm)
        return k


def make_harness(
    *, settings: HttpSettings | None = None, slots: int = 2, **engine_kw: object
) -> Harness:
    settings = settings or HttpSettings(max_body_bytes=64 * 1024)
    limits = RateLimitSettings()
    engine = FakeEngine(**engine_kw)  # type: ignore[arg-type]
    registry = ModelRegistry()
    registry.add_base(BaseModel("royalty-tiny", "/models/base"))
    for name in ("recipes", "astronomy", "legal"):
        registry.add_adapter(Adapter(name, "royalty-tiny", f"/models/{name}"))
    handle = EngineHandle(engine, AdapterPlacement(engine, slots), healthy=True)
    pool = EnginePool([handle])
    keys = InMemoryKeyStore()
    records: list[UsageRecord] = []

    async def sink(rec: UsageRecord) -> None:
        records.append(rec)

    inference = InferenceService(
        registry, pool, RateLimiter(), sink,
        default_rpm=limits.default_rpm, default_tpm=limits.default_tpm,
    )  # fmt: skip
    services = Services(settings, Authenticator(keys), registry, pool, inference)
    return Harness(engine, keys, services, records)
