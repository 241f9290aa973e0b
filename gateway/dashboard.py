"""The built-in dashboard for the embedded default (which has no Grafana): `/dashboard`.

A self-contained page (inline JS and SVG, nothing fetched from elsewhere) polls
`/dashboard/data`, a JSON summary built from the same metrics `/metrics` exposes (so with
`PROMETHEUS_MULTIPROC_DIR` it covers every worker process), and draws traffic, tokens, top
adapters, credits and backlog.

Both need an admin key. A browser cannot send a bearer header when it opens a page, so the
page shows a login form that POSTs the key to `/dashboard/login`, which answers with an
HttpOnly, SameSite=Strict cookie scoped to `/dashboard`. The key travels in a POST body, never
in a URL, so it cannot end up in access logs or browser history. The cookie holds the key
itself rather than a session id: every gateway replica can check it (no shared session store),
and revoking the key ends the session within the key cache's TTL. `/dashboard/data` also
accepts `Authorization: Bearer` for scripts.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie

from gateway.auth import KeyInfo, KeyStoreUnavailable
from gateway.errors import Forbidden, ServiceUnavailable, Unauthorized
from gateway.metrics import refresh_now, samples
from gateway.routes.common import JSON, authorize, read_body, services_of

COOKIE = "royalty_dashboard_key"
COOKIE_PATH = "/dashboard"
SESSION_S = 8 * 3600
_STATIC = Path(__file__).with_name("static")
_PAGE = (_STATIC / "dashboard.html").read_text()
_LOGIN = (_STATIC / "dashboard_login.html").read_text()
TOP_ADAPTERS = 10


# --- auth -------------------------------------------------------------------------------------
async def _cookie_key(request: Request[Any, Any, Any]) -> KeyInfo | None:
    """The admin key from the dashboard cookie, or None (absent, unknown, not admin)."""
    key = request.cookies.get(COOKIE)
    if not key:
        return None
    try:
        info = await services_of(request).auth.authenticate(key)
    except KeyStoreUnavailable:
        raise ServiceUnavailable(
            "API keys cannot be checked right now; please retry shortly.",
            code="auth_unavailable",
            headers={"Retry-After": "2"},
        ) from None
    return info if info is not None and "admin" in info.scopes else None


def _secure(request: Request[Any, Any, Any]) -> bool:
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    return proto.split(",")[0].strip() == "https"


def _html(body: str, status: int = 200, nonce: str | None = None) -> Response[str]:
    csp = "default-src 'none'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'"
    if nonce:
        csp += f"; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'"
    return Response(
        body,
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": csp,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _login_page(message: str, status: int) -> Response[str]:
    nonce = secrets.token_urlsafe(16)
    body = _LOGIN.replace("{{nonce}}", nonce).replace("{{message}}", _escape(message))
    return _html(body, status, nonce)


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# --- routes -----------------------------------------------------------------------------------
@get("/dashboard", include_in_schema=False)
async def dashboard_page(request: Request[Any, Any, Any]) -> Response[str]:
    if await _cookie_key(request) is None:
        return _login_page("Sign in with an API key that has the admin scope.", 401)
    nonce = secrets.token_urlsafe(16)
    return _html(_PAGE.replace("{{nonce}}", nonce), 200, nonce)


@post("/dashboard/login", include_in_schema=False, status_code=303)
async def dashboard_login(request: Request[Any, Any, Any]) -> Response[str]:
    form = parse_qs((await read_body(request)).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    if not key:
        return _login_page("Enter an API key.", 401)
    try:
        info = await services_of(request).auth.authenticate(key)
    except KeyStoreUnavailable:
        return _login_page("API keys cannot be checked right now; please retry shortly.", 503)
    if info is None:
        return _login_page("Incorrect API key.", 401)
    if "admin" not in info.scopes:
        return _login_page("This key lacks the admin scope the dashboard requires.", 403)
    cookie = Cookie(
        key=COOKIE,
        value=key,
        path=COOKIE_PATH,
        max_age=SESSION_S,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return Response("", status_code=303, headers={"Location": "/dashboard"}, cookies=[cookie])


@post("/dashboard/logout", include_in_schema=False, status_code=303)
async def dashboard_logout() -> Response[str]:
    gone = Cookie(key=COOKIE, value="", path=COOKIE_PATH, max_age=0, httponly=True)
    return Response("", status_code=303, headers={"Location": "/dashboard"}, cookies=[gone])


@get("/dashboard/data", include_in_schema=False)
async def dashboard_data(request: Request[Any, Any, Any]) -> Response[bytes]:
    if await _cookie_key(request) is None:
        if request.headers.get("authorization") is None and request.cookies.get(COOKIE):
            raise Forbidden("The dashboard session's key is unknown or lacks the admin scope.")
        if request.headers.get("authorization") is None:
            raise Unauthorized("Sign in at /dashboard, or send an admin key as a bearer token.")
        await authorize(request, "admin")
    refresh_now(services_of(request).pool)
    body = json.dumps(summarise(samples()), allow_nan=False).encode()
    return Response(body, media_type=JSON, headers={"Cache-Control": "no-store"})


ROUTES = [dashboard_page, dashboard_login, dashboard_logout, dashboard_data]


# --- the summary ------------------------------------------------------------------------------
def _num(v: float) -> float | None:
    return None if math.isnan(v) else v


def _quantile(buckets: dict[float, float], q: float) -> float | None:
    """The `q` quantile from cumulative histogram buckets (upper bound -> count), linearly
    interpolated inside the bucket, as Prometheus' histogram_quantile does."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                return lower
            span = count - below
            return lower + (b - lower) * ((rank - below) / span if span else 0.0)
        lower, below = b, count
    return lower


def summarise(rows: Any) -> dict[str, Any]:
    """The dashboard's JSON from metric samples `(name, labels, value)`."""
    outcomes: dict[str, float] = defaultdict(float)
    by_model: dict[str, float] = defaultdict(float)
    tokens = {"prompt": 0.0, "completion": 0.0}
    adapter_tokens: dict[str, float] = defaultdict(float)
    credits: dict[str, float] = defaultdict(float)
    latency: dict[float, float] = defaultdict(float)
    ttft: dict[float, float] = defaultdict(float)
    engines: dict[str, dict[str, float | None]] = defaultdict(dict)
    scalars: dict[str, float] = defaultdict(float)
    http_total = 0.0
    for name, labels, value in rows:
        if name == "royalty_inference_requests_total":
            outcomes[labels["outcome"]] += value
            by_model[labels["model"]] += value
        elif name == "royalty_http_requests_total":
            http_total += value
        elif name == "royalty_tokens_total":
            tokens[labels["direction"]] = tokens.get(labels["direction"], 0.0) + value
            if labels["adapter"]:
                adapter_tokens[labels["adapter"]] += value
        elif name == "royalty_credits_minted_microcredits_total":
            credits[labels["payee_kind"]] += value
        elif name == "royalty_inference_duration_seconds_bucket":
            latency[float(labels["le"])] += value
        elif name == "royalty_inference_ttft_seconds_bucket":
            ttft[float(labels["le"])] += value
        elif name.startswith("royalty_engine_") and "engine" in labels:
            engines[labels["engine"]][name.removeprefix("royalty_engine_")] = _num(value)
        elif not labels or name == "royalty_adapter_loads_total" or "adapter" in labels:
            # Unlabelled gauges and counters, and per-adapter counters summed.
            if not name.endswith(("_created", "_bucket")):
                scalars[name] += 0.0 if math.isnan(value) else value
    top = sorted(adapter_tokens.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ADAPTERS]
    p50, p99 = _quantile(latency, 0.5), _quantile(latency, 0.99)
    ttft50 = _quantile(ttft, 0.5)
    return {
        "time": time.time(),
        "requests": {
            "total": int(sum(outcomes.values())),
            "ok": int(outcomes.get("ok", 0)),
            "error": int(outcomes.get("error", 0)),
            "client_cancelled": int(outcomes.get("client_cancelled", 0)),
            "http_total": int(http_total),
            "latency_p50_ms": None if p50 is None else p50 * 1000,
            "latency_p99_ms": None if p99 is None else p99 * 1000,
            "ttft_p50_ms": None if ttft50 is None else ttft50 * 1000,
        },
        "tokens": {"prompt": int(tokens["prompt"]), "completion": int(tokens["completion"])},
        "top_adapters": [
            {"adapter": a, "tokens": int(t), "requests": int(by_model.get(a, 0))} for a, t in top
        ],
        "credits": {k: int(v) for k, v in sorted(credits.items())},
        "backlog": {
            "usage_log_pending": int(scalars["royalty_usage_log_pending_records"]),
            "usage_log_oldest_age_s": scalars["royalty_usage_log_oldest_unshipped_age_seconds"],
            "attribution_queue": int(scalars["royalty_attribution_queue_depth"]),
            "engine_waiting": int(sum(e.get("requests_waiting") or 0 for e in engines.values())),
        },
        "adapters": {
            "loads": int(scalars["royalty_adapter_loads_total"]),
            "evictions": int(scalars["royalty_adapter_evictions_total"]),
        },
        "holds": {
            "held_microcredits": int(scalars["royalty_held_microcredits"]),
            "penalties": int(scalars["royalty_penalties_total"]),
        },
        "engines": [{"engine": name, **vals} for name, vals in sorted(engines.items())],
    }
