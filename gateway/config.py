"""The HTTP process's own settings types: what the gateway is configured with, defined here so
that the gateway never imports the application shell that reads them.

`royalty.settings.Settings` holds these as two of its groups and fills them from the
environment by its one rule: each field names its environment variable next to it (`env`),
and the field's type says how the value is read. A test or an embedding program builds them
directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ENV = "env"
"""The key of a field's metadata that names its environment variable."""


def env(name: str, default: Any, *, secret: bool = False) -> Any:
    """A settings field read from the environment variable `name` (default `default`);
    `secret`: left out of `repr` (so out of logs)."""
    return field(default=default, repr=not secret, metadata={ENV: name})


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Where the gateway listens and what one request may be."""

    host: str = env("ROYALTY_HOST", "127.0.0.1")
    port: int = env("ROYALTY_PORT", 8000)
    trusted_proxies: tuple[str, ...] = env("ROYALTY_TRUSTED_PROXIES", ())
    """Addresses (IPs, CIDRs, or `*`) of the reverse proxies whose `X-Forwarded-Proto` and
    `X-Forwarded-For` the gateway believes; empty: none, the connection's own scheme counts."""
    max_body_bytes: int = env("ROYALTY_MAX_BODY_BYTES", 1 << 20)
    """Larger request bodies are a 413."""
    max_tokens_cap: int = env("ROYALTY_MAX_TOKENS_CAP", 4096)
    """The most tokens one request may ask the engine to generate."""
    key_cache_ttl_s: float = env("ROYALTY_KEY_CACHE_TTL_S", 30.0)
    """Seconds a looked-up API key is cached: a revocation takes effect within this time."""


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Per-key request and token rates, and where the counters live."""

    default_rpm: int = env("ROYALTY_DEFAULT_RPM", 600)
    """Requests per minute of a key created without its own limit."""
    default_tpm: int = env("ROYALTY_DEFAULT_TPM", 200_000)
    """Tokens per minute of a key created without its own limit."""
    shared: bool = env("ROYALTY_SHARED_LIMITS", True)
    """Rate limits shared by every gateway process on the database (or Redis); off: per
    process token buckets."""
    redis_url: str | None = env("ROYALTY_REDIS_URL", None)
    """Keep the shared rate-limit counters in Redis instead of PostgreSQL."""
