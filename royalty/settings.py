"""Settings, grouped by concern, built once (from the environment, then the CLI's options) and
injected; nothing reads them at import time.

One rule reads the environment (`Settings.from_env`): every field of every group names its
one environment variable next to it (`env("ROYALTY_...", default)`), and the field's type says
how the variable's text is read:

- `bool`: 1/true/yes/on or 0/false/no/off, any case (empty is off); anything else is an error;
- `int`, `float`, `str`, `Path`: as written;
- `tuple[str, ...]`: a comma-separated list, items stripped, empty items dropped;
- `X | None`: as `X`.

A variable that is not set, or (a flag's aside) set to the empty string, leaves the default.
A value that does not read is a `ValueError` naming the variable. The HTTP process's groups
(`HttpSettings`, `RateLimitSettings`) are defined in `gateway.config`, which the gateway owns
and which never imports this module. README.md (Configuration) lists every variable; a unit
test keeps the list and these fields the same.

Hand-written rather than pydantic-settings: every `royalty` command reads its settings, and
importing pydantic-settings costs 300+ ms, this module a few.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from gateway.config import ENV, HttpSettings, RateLimitSettings, env


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str | None = env("DATABASE_URL", None)
    """None means: run the embedded PostgreSQL under `data_dir/pg`."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The vLLM engines: external ones, or the one `royalty up` starts and supervises."""

    urls: tuple[str, ...] = env("ROYALTY_ENGINE_URLS", ())
    """External vLLM servers. Empty means: start and supervise one engine locally."""
    port: int = env("ROYALTY_ENGINE_PORT", 8100)
    """Port of the engine started locally."""
    max_loras: int = env("ROYALTY_MAX_LORAS", 4)
    """LoRA slots per engine (keep it equal to external engines' `--max-loras`)."""
    max_lora_rank: int = env("ROYALTY_MAX_LORA_RANK", 8)
    max_model_len: int = env("ROYALTY_MAX_MODEL_LEN", 512)
    """Context length of the engine started locally (caps credit reservations)."""
    timeout_s: float = env("ROYALTY_ENGINE_TIMEOUT_S", 600.0)
    adapter_slot_wait_s: float = env("ROYALTY_ADAPTER_SLOT_WAIT_S", 30.0)
    """Seconds a request may wait for a LoRA slot on its engine before a 503 with
    `Retry-After` (every slot serving other adapters' requests)."""
    routing: str = env("ROYALTY_ROUTING", "affinity")
    """`affinity` (an adapter's requests go to an engine that holds it, spilling over under
    load) or `round_robin`; see `serving.pool`."""
    spill_at: float = env("ROYALTY_SPILL_AT", 16.0)
    """Load (requests in flight plus the engine's queue) at which affinity spills over."""


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What is served, and where the model factory writes."""

    dir: Path | None = env("ROYALTY_MODELS_DIR", None)
    """A built model tree (manifest.json, base/, adapters/); None means the demo models."""
    base_model: str | None = env("ROYALTY_BASE_MODEL", None)
    """Served name of the base model; taken from the manifest when not set."""
    adapters_dir: Path | None = env("ROYALTY_ADAPTERS_DIR", None)
    """Where the model factory writes adapters; default `data_dir/adapters`."""
    training_worker: bool = env("ROYALTY_TRAINING_WORKER", True)
    """Run the adapter training worker (`royalty training worker`, the jobs of `POST
    /v1/adapters`) as a child of this process when the served base is a model factory
    build; deployments that run it as its own service set ROYALTY_TRAINING_WORKER=0."""


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """The demo world `royalty up` brings on the demo models."""

    datanets: bool | None = env("ROYALTY_DEMO", None)
    """Create the demo datanets and train the demo adapters on them at start; None means
    yes when serving the demo models (no models dir)."""
    key: bool = env("ROYALTY_DEMO_KEY", True)
    """Allow `royalty up` to mint a demo API key (and top the `demo` account up to 100
    credits); it does only when serving the demo models on its own engine
    (`royalty.server.mints_demo_key`). ROYALTY_DEMO_KEY=0 / `--no-demo-key`: never."""
    progress: bool = env("ROYALTY_PROGRESS", True)
    """Progress bars for long steps at start (model and adapter training)."""


@dataclass(frozen=True, slots=True)
class UsageSettings:
    """Usage capture: the durable local log, its shipping to Postgres, and posting."""

    log_dir: Path | None = env("ROYALTY_USAGE_LOG_DIR", None)
    """Default `data_dir/usage-log`."""
    log_min_free_mb: int = env("ROYALTY_USAGE_LOG_MIN_FREE_MB", 16)
    """Below this much free space on the usage log's disk the gateway refuses new requests
    (503, `/healthz` says why) while the records of those in flight still fit."""
    ship_interval_s: float = env("ROYALTY_SHIP_INTERVAL_S", 0.2)
    ship_batch_size: int = env("ROYALTY_SHIP_BATCH_SIZE", 5000)
    post: bool = env("ROYALTY_POST_USAGE", True)
    """Run the ledger posting worker as a child of this process."""
    prompt_digest_key: str = env("ROYALTY_PROMPT_DIGEST_KEY", "", secret=True)
    """HMAC key of the prompt digests on usage events (repeated-prompt detection); every
    gateway of a deployment must share it. Empty: a fixed public key."""


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    enabled: bool = env("ROYALTY_BUDGETS", True)
    """Reserve each request's estimated cost from the account's credit (402 when it cannot
    be covered); off only for benchmarks that isolate the gateway."""
    hold_s: float = env("ROYALTY_BUDGET_HOLD_S", 900.0)
    """Seconds a credit reservation holds before the ledger worker's sweeper may release it
    (if its request recorded no usage): the engine timeout plus the usage shipping lag."""


@dataclass(frozen=True, slots=True)
class InfluenceSettings:
    enabled: bool = env("ROYALTY_INFLUENCE", True)
    """Queue a gradient influence job for every adapter response and run the influence
    worker (`royalty influence worker`) as a child process."""
    worker: bool = env("ROYALTY_INFLUENCE_WORKER", True)
    """With `enabled`: run the worker as a child of this process (deployments that run
    workers as their own service set ROYALTY_INFLUENCE_WORKER=0 on the gateways)."""
    retention_s: float = env("ROYALTY_INFLUENCE_RETENTION_S", 0.0)
    """Seconds prompt and output text stay in the influence queue after the job finishes
    (0: deleted when it finishes)."""


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = env("ROYALTY_HOME", Path(".royalty"))
    """Everything local: the embedded PostgreSQL, models, adapters, usage log, logs."""
    http: HttpSettings = field(default_factory=HttpSettings)
    limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    engines: EngineSettings = field(default_factory=EngineSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    influence: InfluenceSettings = field(default_factory=InfluenceSettings)

    @property
    def resolved_adapters_dir(self) -> Path:
        return self.models.adapters_dir or self.data_dir / "adapters"

    @property
    def resolved_usage_log_dir(self) -> Path:
        return self.usage.log_dir or self.data_dir / "usage-log"

    def with_(self, **changes: Any) -> Settings:
        """A copy with `changes` (what the command line says): a top-level field's value, or
        a group's name with a mapping of its fields' values. None (an option not given)
        changes nothing."""
        top: dict[str, Any] = {}
        for name, value in changes.items():
            if value is None:
                continue
            if isinstance(value, Mapping):
                value = replace(
                    getattr(self, name), **{k: v for k, v in value.items() if v is not None}
                )
            top[name] = value
        return replace(self, **top)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return _read(cls, os.environ if environ is None else environ)


def env_vars() -> Iterator[tuple[str, str]]:
    """(dotted field, environment variable) of every setting, in declaration order."""

    def walk(cls: type, prefix: str) -> Iterator[tuple[str, str]]:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if ENV in f.metadata:
                yield prefix + f.name, f.metadata[ENV]
            else:
                yield from walk(hints[f.name], f"{prefix}{f.name}.")

    return walk(Settings, "")


_UNSET = object()


def _read(cls: Any, environ: Mapping[str, str]) -> Any:
    """`cls` (a settings dataclass) with every field whose variable is set read from
    `environ`, groups recursively."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        kind = hints[f.name]
        if ENV not in f.metadata:
            assert is_dataclass(kind), f"{cls.__name__}.{f.name} names no environment variable"
            values[f.name] = _read(kind, environ)
            continue
        name = f.metadata[ENV]
        if name in environ:
            value = _parse(name, kind, environ[name])
            if value is not _UNSET:
                values[f.name] = value
    return cls(**values)


def _parse(name: str, kind: Any, text: str) -> Any:
    if isinstance(kind, types.UnionType):  # X | None
        (kind,) = (k for k in typing.get_args(kind) if k is not type(None))
    try:
        if kind is bool:
            return _flag(text)
        if text == "":
            return _UNSET
        if typing.get_origin(kind) is tuple:
            return tuple(item.strip() for item in text.split(",") if item.strip())
        if kind in (int, float, str, Path):
            return kind(text)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    raise TypeError(f"{name}: no rule reads a {kind!r}")


def _flag(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")
