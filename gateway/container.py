"""The service container the routes see: built once by the runtime (or a test) and injected."""

from __future__ import annotations

from dataclasses import dataclass

from attribution.lineage import LineageService
from attribution.service import DatanetService
from attribution.training_jobs import TrainingJobs
from gateway.auth import Authenticator
from gateway.config import HttpSettings
from gateway.dashboard_sessions import DashboardSessions
from gateway.inference import InferenceService
from metering.service import MeteringService
from metering.usage.queries import UsageQueries
from serving.pool import EnginePool
from serving.registry import ModelRegistry


@dataclass
class Services:
    settings: HttpSettings
    auth: Authenticator
    registry: ModelRegistry
    pool: EnginePool
    inference: InferenceService
    datanets: DatanetService | None = None
    metering: MeteringService | None = None
    lineage: LineageService | None = None
    usage_queries: UsageQueries | None = None
    training_jobs: TrainingJobs | None = None
    """The adapter training queue (admin API); None: this gateway cannot train adapters (its
    base model is not a model factory build)."""
    dashboard_sessions: DashboardSessions | None = None
    """Dashboard sign-in sessions (Postgres under `royalty up`); None: in memory, one process."""
