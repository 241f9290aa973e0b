"""Settings, built once (from the environment or the CLI) and injected; nothing reads them at
import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path(".royalty")
    database_url: str | None = None
    """None means: run the embedded PostgreSQL under `data_dir/pg`."""
    host: str = "127.0.0.1"
    port: int = 8000
    engine_urls: tuple[str, ...] = ()
    """External vLLM servers. Empty means: start and supervise one engine locally."""
    base_model: str | None = None
    """Served name of the base model; taken from the demo manifest when not set."""
    models_dir: Path | None = None
    """A built model tree (manifest.json, base/, adapters/); None means the demo models."""
    adapters_dir: Path | None = None
    """Where the model factory writes adapters; default `data_dir/adapters`."""
    demo_datanets: bool | None = None
    """Create the demo datanets and train the demo adapters on them at start; None means
    yes when serving the demo models (no `models_dir`)."""
    budgets: bool = True
    """Reserve each request's estimated cost from the account's credit (402 when it cannot
    be covered); off only for benchmarks that isolate the gateway."""
    post_usage: bool = True
    """Run the ledger posting worker in this process."""
    progress: bool = True
    """Progress bars for long steps at start (model and adapter training)."""
    engine_port: int = 8100
    max_loras: int = 4
    max_lora_rank: int = 8
    max_model_len: int = 512
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 4096
    default_rpm: int = 600
    default_tpm: int = 200_000
    key_cache_ttl_s: float = 30.0
    usage_log_dir: Path | None = None
    usage_log_min_free_mb: int = 16
    """Below this much free space on the usage log's disk the gateway refuses new requests
    (503, `/healthz` says why) while the records of those in flight still fit."""
    ship_interval_s: float = 0.2
    ship_batch_size: int = 5000
    engine_timeout_s: float = 600.0
    budget_hold_s: float = 900.0
    """Seconds a credit reservation holds before the ledger worker's sweeper may release it
    (if its request recorded no usage): the engine timeout plus the usage shipping lag."""
    adapter_slot_wait_s: float = 30.0
    """Seconds a request may wait for a LoRA slot on its engine before a 503 with
    `Retry-After` (every slot serving other adapters' requests)."""
    routing: str = "affinity"
    """`affinity` (an adapter's requests go to an engine that holds it, spilling over under
    load) or `round_robin`; see `serving.pool`."""
    spill_at: float = 16.0
    """Load (requests in flight plus the engine's queue) at which affinity spills over."""
    shared_limits: bool = True
    """Rate limits shared by every gateway process on the database (or Redis); off: per
    process token buckets."""
    redis_url: str | None = None
    """Keep the shared rate-limit counters in Redis instead of PostgreSQL."""
    influence: bool = True
    """Queue a gradient influence job for every adapter response and run the influence
    worker (`royalty influence worker`) as a child process."""
    influence_worker: bool = True
    """With `influence`: run the worker as a child of this process (deployments that run
    workers as their own service set ROYALTY_INFLUENCE_WORKER=0 on the gateways)."""
    influence_retention_s: float = 0.0
    """Seconds prompt and output text stay in the influence queue after the job finishes
    (0: deleted when it finishes)."""
    prompt_digest_key: str = field(default="", repr=False)
    """HMAC key of the prompt digests on usage events (repeated-prompt detection); every
    gateway of a deployment must share it. Empty: a fixed public key."""
    demo_key: bool = True
    """Allow `royalty up` to mint a demo API key (and top the `demo` account up to 100
    credits); it does only when serving the demo models on its own engine
    (`royalty.server.mints_demo_key`). ROYALTY_DEMO_KEY=0 / `--no-demo-key`: never."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses (IPs, CIDRs, or `*`) of the reverse proxies whose `X-Forwarded-Proto` and
    `X-Forwarded-For` the gateway believes; empty: none, the connection's own scheme counts."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolved_adapters_dir(self) -> Path:
        return self.adapters_dir or self.data_dir / "adapters"

    @property
    def resolved_usage_log_dir(self) -> Path:
        return self.usage_log_dir or self.data_dir / "usage-log"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        s = cls()
        urls = tuple(u for u in e.get("ROYALTY_ENGINE_URLS", "").split(",") if u.strip())
        proxies = tuple(
            p.strip() for p in e.get("ROYALTY_TRUSTED_PROXIES", "").split(",") if p.strip()
        )
        return s.with_(
            data_dir=Path(e["ROYALTY_HOME"]) if "ROYALTY_HOME" in e else None,
            database_url=e.get("DATABASE_URL") or None,
            host=e.get("ROYALTY_HOST"),
            port=int(e["ROYALTY_PORT"]) if "ROYALTY_PORT" in e else None,
            engine_port=int(e["ROYALTY_ENGINE_PORT"]) if "ROYALTY_ENGINE_PORT" in e else None,
            engine_urls=urls or None,
            base_model=e.get("ROYALTY_BASE_MODEL"),
            models_dir=Path(e["ROYALTY_MODELS_DIR"]) if "ROYALTY_MODELS_DIR" in e else None,
            adapters_dir=Path(e["ROYALTY_ADAPTERS_DIR"]) if "ROYALTY_ADAPTERS_DIR" in e else None,
            demo_datanets=_flag(e["ROYALTY_DEMO"]) if "ROYALTY_DEMO" in e else None,
            budgets=_flag(e["ROYALTY_BUDGETS"]) if "ROYALTY_BUDGETS" in e else None,
            post_usage=_flag(e["ROYALTY_POST_USAGE"]) if "ROYALTY_POST_USAGE" in e else None,
            usage_log_min_free_mb=int(e["ROYALTY_USAGE_LOG_MIN_FREE_MB"])
            if "ROYALTY_USAGE_LOG_MIN_FREE_MB" in e
            else None,
            usage_log_dir=Path(e["ROYALTY_USAGE_LOG_DIR"])
            if "ROYALTY_USAGE_LOG_DIR" in e
            else None,
            ship_interval_s=float(e["ROYALTY_SHIP_INTERVAL_S"])
            if "ROYALTY_SHIP_INTERVAL_S" in e
            else None,
            max_loras=int(e["ROYALTY_MAX_LORAS"]) if "ROYALTY_MAX_LORAS" in e else None,
            budget_hold_s=float(e["ROYALTY_BUDGET_HOLD_S"])
            if "ROYALTY_BUDGET_HOLD_S" in e
            else None,
            adapter_slot_wait_s=float(e["ROYALTY_ADAPTER_SLOT_WAIT_S"])
            if "ROYALTY_ADAPTER_SLOT_WAIT_S" in e
            else None,
            routing=e.get("ROYALTY_ROUTING") or None,
            spill_at=float(e["ROYALTY_SPILL_AT"]) if "ROYALTY_SPILL_AT" in e else None,
            shared_limits=_flag(e["ROYALTY_SHARED_LIMITS"])
            if "ROYALTY_SHARED_LIMITS" in e
            else None,
            redis_url=e.get("ROYALTY_REDIS_URL") or None,
            prompt_digest_key=e.get("ROYALTY_PROMPT_DIGEST_KEY") or None,
            influence=_flag(e["ROYALTY_INFLUENCE"]) if "ROYALTY_INFLUENCE" in e else None,
            influence_worker=_flag(e["ROYALTY_INFLUENCE_WORKER"])
            if "ROYALTY_INFLUENCE_WORKER" in e
            else None,
            influence_retention_s=float(e["ROYALTY_INFLUENCE_RETENTION_S"])
            if "ROYALTY_INFLUENCE_RETENTION_S" in e
            else None,
            demo_key=_flag(e["ROYALTY_DEMO_KEY"]) if "ROYALTY_DEMO_KEY" in e else None,
            trusted_proxies=proxies or None,
        )


def _flag(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")
