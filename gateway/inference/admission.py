"""Admitting a request, in this order, before any engine sees it:

1. usage can be recorded right now (else 503 `usage_unavailable`: nothing is served that
   cannot be recorded);
2. its prompt digest, the one part of its usage record that can fail (too deep to hash), is
   computed (else 400 `nesting_too_deep`);
3. its model resolves (else 404 `model_not_found`);
4. its token budget is within the server's cap (else 400 naming the field) -- before any
   reservation: an absurd `max_tokens` is a bad request, not a money problem;
5. the key's rate limit lets it through (else 429 with `Retry-After`);
6. its account's credit covers a reservation (else 402 `insufficient_quota`).

Every refusal is an `ApiError`; the caller records it.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from gateway.auth import KeyInfo
from gateway.error_table import as_api_error
from gateway.errors import BadRequest, RateLimited, ServiceUnavailable
from gateway.inference.context import CallContext
from gateway.inference.endpoints import Request, engine_body, request_prompt, spec_of
from gateway.ratelimit import Limiter, RateLimiter
from metering.budgets.gate import BudgetGate, InsufficientCredit
from metering.usage.record import prompt_digest
from serving.registry import ModelRegistry, Target, UnknownModel


class KeyLimits:
    """A key's limits (its own, else the server's defaults) on the shared limiter: requests
    are admitted against both, tokens are debited once a response is counted."""

    def __init__(self, limiter: Limiter, default_rpm: int, default_tpm: int) -> None:
        self.limiter = limiter
        self.default_rpm = default_rpm
        self.default_tpm = default_tpm

    def of(self, key: KeyInfo) -> tuple[int, int]:
        return key.rpm_limit or self.default_rpm, key.tpm_limit or self.default_tpm

    async def acquire(self, key: KeyInfo) -> None:
        rpm, tpm = self.of(key)
        wait = await self.limiter.acquire(key.key_id, rpm, tpm)
        if wait is not None:
            raise RateLimited(
                f"Rate limit reached for this key ({rpm} requests/min, {tpm} tokens/min). "
                f"Retry in {wait:.1f}s.",
                headers={"Retry-After": RateLimiter.retry_after_header(wait)},
            )

    def debit(self, key: KeyInfo, tokens: int) -> None:
        _, tpm = self.of(key)
        self.limiter.debit_tokens(key.key_id, tpm, tokens)


class Admission:
    def __init__(
        self,
        registry: ModelRegistry,
        limits: KeyLimits,
        unrecordable: Callable[[], str | None],
        *,
        budget: BudgetGate | None = None,
        max_tokens_cap: int | None = None,
        digest_key: bytes = b"",
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.unrecordable = unrecordable
        """Why usage cannot be recorded right now (`UsageSink.health`), or None."""
        self.budget = budget
        """Prepaid credit: reserve before serving (None: not enforced)."""
        self.max_tokens_cap = max_tokens_cap
        self.digest_key = digest_key

    async def admit(self, ctx: CallContext, req: Request) -> Target:
        if self.unrecordable() is not None:
            # Nothing is served that cannot be recorded.
            raise ServiceUnavailable(
                "Usage cannot be recorded right now, so requests are refused; please retry "
                "shortly.",
                code="usage_unavailable",
                headers={"Retry-After": "5"},
            )
        ctx.prompt_digest = self._prompt_digest(req)
        try:
            target = self.registry.resolve(req.model)
        except UnknownModel as e:
            raise as_api_error(e) from None
        self._check_token_budget(req)
        await self.limits.acquire(ctx.key)
        if self.budget is not None:
            await self._reserve(self.budget, ctx, req, target)
        return target

    def _prompt_digest(self, req: Request) -> str:
        try:
            return prompt_digest(request_prompt(req), self.digest_key)
        except RecursionError:  # decode caps nesting; this is the last line of defence
            raise BadRequest("The request is nested too deeply.", code="nesting_too_deep") from None

    def _check_token_budget(self, req: Request) -> None:
        wanted = req.token_budget
        if self.max_tokens_cap is not None and wanted is not None and wanted > self.max_tokens_cap:
            param = spec_of(req).token_param(req)
            raise BadRequest(
                f"'{param}' is {wanted}; this server generates at most {self.max_tokens_cap} "
                "tokens per request.",
                param=param,
            )

    @staticmethod
    async def _reserve(budget: BudgetGate, ctx: CallContext, req: Request, target: Target) -> None:
        # Priced by the bytes of what the engine is sent: every prompt token is at least one
        # byte of it, whatever the script, and tools, tool calls, names and response_format
        # are all in it. Tool schemas count twice: chat templates re-render them with a
        # space after every `,` and `:`.
        body = engine_body(req, target, stream=False)
        tools = spec_of(req).tools(req)
        prompt_bytes = len(body) + (len(msgspec.json.encode(tools)) if tools else 0)
        adapter = target.adapter.name if target.adapter else ""
        try:
            await budget.reserve(
                ctx.key.account_id, ctx.request_id, target.base.name, adapter,
                prompt_bytes, req.token_budget, req.n or 1,
            )  # fmt: skip
        except InsufficientCredit as e:
            raise as_api_error(e) from None
