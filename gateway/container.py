"""The service container the routes see: built once by the runtime (or a test) and injected."""

from __future__ import annotations

from dataclasses import dataclass

from attribution.lineage import LineageService
from attribution.service import DatanetService
from factory.build import DemoModels
from gateway.auth import Authenticator
from gateway.dashboard_sessions import DashboardSessions
from gateway.inference import InferenceService
from metering.service import MeteringService
from metering.usage.queries import UsageQueries
from royalty.settings import Settings
from serving.pool import EnginePool
from serving.registry import ModelRegistry


@dataclass
class Services:
    settings: Settings
    auth: Authenticator
    registry: ModelRegistry
    pool: EnginePool
    inference: InferenceService
    datanets: DatanetService | None = None
    metering: MeteringService | None = None
    lineage: LineageService | None = None
    usage_queries: UsageQueries | None = None
    factory_base: DemoModels | None = None
    """The served base model's build, for training adapters in this process (admin API)."""
    dashboard_sessions: DashboardSessions | None = None
    """Dashboard sign-in sessions (Postgres under `royalty up`); None: in memory, one process."""
