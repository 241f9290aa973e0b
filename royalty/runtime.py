"""The running system, built from `Settings`: database, keys, usage log and shipper, models,
engines (supervised locally or external), and the inference service. One place owns their
start and stop order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.lineage import LineageService
from attribution.responses import ResponseAttributor
from attribution.service import DatanetService
from attribution.training_jobs import PostgresTrainingJobs
from core.deadletters import PostgresDeadLetterStore
from factory.build import DemoModels, ManifestError, load_manifest
from gateway.auth import Authenticator, PostgresKeyStore
from gateway.container import Services
from gateway.dashboard_sessions import PostgresDashboardSessions
from gateway.inference import InferenceService
from gateway.influence import InfluenceEnqueuer, influence_queue
from gateway.metrics import MetricsSampler
from gateway.ratelimit import (
    Limiter,
    PostgresCounters,
    RateLimiter,
    RedisCounters,
    SharedRateLimiter,
)
from metering.budgets.gate import BudgetGate
from metering.budgets.store import PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.service import MeteringService
from metering.usage.log import UsageLog
from metering.usage.queries import UsageQueries
from metering.usage.recorder import UsageRecorder
from metering.usage.shipper import UsageShipper
from metering.usage.store import PostgresUsageStore
from royalty.adapter_sync import AdapterSync
from royalty.db import create_engine, migrate, resolve_database_url
from royalty.settings import Settings
from serving.engine import VLLMHttpEngine
from serving.engine_guard import KILL_WAIT_S, set_parent_death_signal
from serving.placement import AdapterPlacement
from serving.pool import ROUTINGS, EngineHandle, EnginePool
from serving.registry import ModelRegistry
from serving.supervisor import EngineSupervisor, VLLMServerSpec

log = logging.getLogger(__name__)


def demo_models_dir(settings: Settings, *, progress: bool = True) -> Path:
    """The model tree to serve: the configured one, or the demo models (built once)."""
    if settings.models.dir is not None:
        return settings.models.dir
    from factory import build_demo_models

    return build_demo_models(settings.data_dir / "models", progress=progress).root


@dataclass
class Runtime:
    settings: Settings
    db: AsyncEngine | None = None
    usage_log: UsageLog | None = None
    shipper: UsageShipper | None = None
    recorder: UsageRecorder | None = None
    supervisors: list[EngineSupervisor] = field(default_factory=list)
    services: Services | None = None
    models_dir: Path | None = None
    adapter_sync: AdapterSync | None = None
    poster: asyncio.subprocess.Process | None = None
    """The ledger posting worker: a child process, so that batch pricing never competes
    with request handling on the gateway's event loop."""
    sampler: MetricsSampler | None = None
    influence: InfluenceEnqueuer | None = None
    influence_worker: asyncio.subprocess.Process | None = None
    """The influence worker (`royalty influence worker`), a child process like the poster."""
    training_worker: asyncio.subprocess.Process | None = None
    """The adapter training worker (`royalty training worker`): torch never runs in here."""
    redis_counters: RedisCounters | None = None

    async def start(self, *, models_dir: Path | None = None) -> Services:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        url = resolve_database_url(s.database.url, s.data_dir)
        self.db = create_engine(url)
        await migrate(self.db)

        self.usage_log = await UsageLog.open(
            s.resolved_usage_log_dir, min_free_bytes=s.usage.log_min_free_mb << 20
        )
        usage_store = PostgresUsageStore(self.db)
        # Records the log refuses (full disk, failed fsync) go straight to Postgres.
        self.recorder = UsageRecorder(self.usage_log, usage_store)
        self.shipper = UsageShipper(
            self.usage_log,
            usage_store,
            batch_size=s.usage.ship_batch_size,
            interval_s=s.usage.ship_interval_s,
            dead_letters=PostgresDeadLetterStore(self.db),
        )
        self.shipper.start()

        tree = self.models_dir = models_dir or demo_models_dir(s)
        registry = ModelRegistry.from_manifest(tree, s.models.base_model)
        base = registry.bases[0]
        # A model factory build (the demo models, or one made like them) can train adapters
        # and carries its weights hash; any other tree (a real base model with a hand-written
        # manifest) is served as is.
        try:
            built: DemoModels | None = load_manifest(tree, verify=False)
        except ManifestError:
            built = None
        demo = s.demo.datanets
        if demo is None:  # by default, the demo world comes with the demo models
            demo = models_dir is None and s.models.dir is None
        if demo:
            if built is None:
                raise ValueError(f"{tree} is not a model factory build: no demo world on it")
            from royalty.demo import ensure_demo_world

            await ensure_demo_world(
                self.db, built, s.resolved_adapters_dir, progress=s.demo.progress
            )
        lineage = LineageService(self.db)
        tokenizer = Path(base.path) / "tokenizer.json"
        attributor = ResponseAttributor(tokenizer) if tokenizer.is_file() else None
        self.adapter_sync = AdapterSync(
            lineage,
            registry,
            base.name,
            built.manifest["base"]["weights_sha256"] if built is not None else "",
            attributor=attributor,
        )
        await self.adapter_sync.sync_once()
        self.adapter_sync.start()
        if s.engines.routing not in ROUTINGS:
            raise ValueError(f"ROYALTY_ROUTING must be one of {', '.join(ROUTINGS)}")
        pool = EnginePool(
            self._engines(base.name, base.path),
            routing=s.engines.routing,
            spill_at=s.engines.spill_at,
        )
        if s.engines.urls:
            pool.start_health_checks()
        else:
            for sup in self.supervisors:
                await sup.start()

        self.sampler = MetricsSampler(pool, self.usage_log)
        self.sampler.start()

        if s.influence.enabled:
            self.influence = InfluenceEnqueuer(
                influence_queue(self.db, s.influence.retention_s),
                dead_letters=PostgresDeadLetterStore(self.db),
            )
            self.influence.start()
        inference = InferenceService(
            registry,
            pool,
            self._limiter(),
            self.recorder,
            default_rpm=s.limits.default_rpm,
            default_tpm=s.limits.default_tpm,
            attributor=attributor.attribute if attributor is not None else None,
            max_tokens_cap=s.http.max_tokens_cap,
            digest_key=s.usage.prompt_digest_key.encode(),
            budget=BudgetGate(
                PostgresBudgets(self.db, hold_s=s.budgets.hold_s),
                PostgresCatalog(self.db),
                # an external engine's context length is its own: no cap known here
                context_len=None if s.engines.urls else s.engines.max_model_len,
            )
            if s.budgets.enabled
            else None,
            observers=(self.influence,) if self.influence is not None else (),
        )
        if s.usage.post:
            self.poster = await _start_ledger_worker(url, s.data_dir / "logs" / "ledger-worker.log")
        if s.influence.enabled and s.influence.worker:
            self.influence_worker = await _start_child(
                ["influence", "worker", "--models-dir", str(tree)],
                s.data_dir / "logs" / "influence-worker.log",
                database_url=url,
            )
        if built is not None and s.models.training_worker:
            adapters = str(s.resolved_adapters_dir)
            self.training_worker = await _start_child(
                ["training", "worker", "--models-dir", str(tree), "--adapters-dir", adapters],
                s.data_dir / "logs" / "training-worker.log",
                database_url=url,
            )
        self.services = Services(
            settings=s.http,
            auth=Authenticator(PostgresKeyStore(self.db), ttl_s=s.http.key_cache_ttl_s),
            registry=registry,
            pool=pool,
            inference=inference,
            datanets=DatanetService(self.db),
            lineage=lineage,
            usage_queries=UsageQueries(self.db),
            metering=MeteringService(self.db),
            training_jobs=PostgresTrainingJobs(self.db) if built is not None else None,
            dashboard_sessions=PostgresDashboardSessions(self.db),
        )
        return self.services

    def _limiter(self) -> Limiter:
        s = self.settings
        if not s.limits.shared:
            return RateLimiter()
        if s.limits.redis_url:
            self.redis_counters = RedisCounters.from_url(s.limits.redis_url)
            return SharedRateLimiter(self.redis_counters)
        assert self.db is not None
        return SharedRateLimiter(PostgresCounters(self.db))

    def _engines(self, base_name: str, base_path: str) -> list[EngineHandle]:
        s = self.settings
        if s.engines.urls:
            clients = [VLLMHttpEngine(u, timeout_s=s.engines.timeout_s) for u in s.engines.urls]
            return [
                EngineHandle(
                    c,
                    AdapterPlacement(c, s.engines.max_loras, wait_s=s.engines.adapter_slot_wait_s),
                )
                for c in clients
            ]
        spec = VLLMServerSpec(
            model_path=base_path,
            served_name=base_name,
            port=s.engines.port,
            max_loras=s.engines.max_loras,
            max_lora_rank=s.engines.max_lora_rank,
            max_model_len=s.engines.max_model_len,
        )
        client = VLLMHttpEngine(spec.url, name=f"local:{spec.port}", timeout_s=s.engines.timeout_s)
        handle = EngineHandle(
            client,
            AdapterPlacement(client, s.engines.max_loras, wait_s=s.engines.adapter_slot_wait_s),
        )
        self.supervisors.append(
            EngineSupervisor(
                spec,
                handle,
                s.data_dir / "logs" / f"vllm-{spec.port}.log",
                run_dir=s.data_dir / "run",
            )
        )
        return [handle]

    async def wait_ready(self, timeout_s: float = 300.0) -> None:
        assert self.services is not None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.services.pool.ready():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("no engine became ready")
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        """Finish usage writes, ship everything to Postgres, then stop engines."""
        if self.adapter_sync is not None:
            await self.adapter_sync.stop()
        if self.poster is not None:  # a batch in flight rolls back; the next start posts it
            await _stop_process(self.poster)
        if self.sampler is not None:
            await self.sampler.stop()
        if self.influence_worker is not None:  # its job in flight is redone after the lease
            await _stop_process(self.influence_worker)
        if self.training_worker is not None:  # its job in flight is given back to the queue
            await _stop_process(self.training_worker)
        if self.services is not None:
            await self.services.inference.drain()
        if self.recorder is not None:  # records held in memory: a last try into log or store
            await self.recorder.close()
        if self.influence is not None:
            await self.influence.stop(flush=True)
        if self.shipper is not None:
            await self.shipper.stop(flush=True)
        if self.usage_log is not None:
            await self.usage_log.close()
        for sup in self.supervisors:
            await sup.stop()
        if self.services is not None:
            await self.services.pool.close()
        if self.redis_counters is not None:
            await self.redis_counters.close()
        if self.db is not None:
            await self.db.dispose()


def _die_with_parent(parent_pid: int) -> None:  # runs in the child, before exec
    """SIGKILL when the parent dies (PR_SET_PDEATHSIG), however it dies: both workers are
    crash-safe (a ledger batch in flight rolls back, an influence job is redone after its
    lease), and only SIGKILL cannot be delayed by a busy event loop. The signal follows the
    thread that forked: `_start_child` forks from the event loop's thread (asyncio and uvloop
    both spawn from the calling thread), which in `royalty up` is the main thread and lives
    as long as the process. `parent_pid` is checked after the call, as the parent may have
    died before it."""
    set_parent_death_signal(signal.SIGKILL, parent_pid)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


async def _start_ledger_worker(database_url: str, log_path: Path) -> asyncio.subprocess.Process:
    return await _start_child(["ledger", "worker"], log_path, database_url=database_url)


async def _start_child(
    args: list[str], log_path: Path, *, database_url: str
) -> asyncio.subprocess.Process:
    """`royalty ARGS...` as a child process that dies with this one (PDEATHSIG). The database
    URL, password included, goes in its environment (`DATABASE_URL`, which every command's
    `--database-url` reads), never on its command line: any local user can read those (`ps`)."""
    royalty = Path(sys.executable).with_name("royalty")
    env = {**os.environ, "DATABASE_URL": database_url}
    log = _open_log(log_path)
    try:
        return await asyncio.create_subprocess_exec(
            str(royalty),
            *args,
            stdout=log,
            stderr=log,
            env=env,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
    finally:
        log.close()


async def _stop_process(proc: asyncio.subprocess.Process, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; never waits more than `KILL_WAIT_S` beyond."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        log.warning("child %s did not stop in %.0fs; killing it", proc.pid, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), KILL_WAIT_S)
        except TimeoutError:  # uninterruptible sleep: nothing more can be done from here
            log.error("child %s still running %.0fs after SIGKILL", proc.pid, KILL_WAIT_S)
