"""The built-in dashboard for the embedded default (which has no Grafana): `/dashboard`.

A self-contained page (inline JS and SVG, nothing fetched from elsewhere) polls
`/dashboard/data`, a JSON summary built from the same metrics `/metrics` exposes (so with
`PROMETHEUS_MULTIPROC_DIR` it covers every worker process), and draws traffic, tokens, top
adapters, credits and backlog.

Both need an admin key. A browser cannot send a bearer header when it opens a page, so the
page shows a login form that POSTs the key to `/dashboard/login` (in a POST body, never in a
URL, so it cannot end up in access logs or browser history). Signing in opens a server-side
session (`gateway.dashboard_sessions`): the HttpOnly, SameSite=Strict cookie scoped to
`/dashboard` holds a random session id, never the key; the store keeps only the id's digest and
the key's id. A session ends after 8 h idle or 24 h in all, at sign-out (deleted), and as soon as
its key is revoked. The cookie is `Secure` when the connection is https: the connection's own
scheme, which uvicorn takes from `X-Forwarded-Proto` only for the proxies listed in
`ROYALTY_TRUSTED_PROXIES` (`royalty.server.uvicorn_config`); a client's header alone never counts.

Both forms carry a CSRF token. Sign-in: double-submit; the login page sets a random token in an
HttpOnly, SameSite=Strict cookie and in the form, and a sign-in whose two copies differ is
refused. Sign-out: the page's token is derived from the session id (which another site can
neither read nor guess). `/dashboard/data` also accepts `Authorization: Bearer` for scripts.
"""

from __future__ import annotations

import hashlib
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
from gateway.dashboard_sessions import ABSOLUTE_S, DashboardSessions, InMemoryDashboardSessions
from gateway.errors import Forbidden, ServiceUnavailable, Unauthorized
from gateway.metrics import refresh_now, samples
from gateway.routes.common import JSON, authorize, read_body, services_of

COOKIE = "royalty_dashboard_session"
CSRF_COOKIE = "royalty_dashboard_csrf"
COOKIE_PATH = "/dashboard"
CSRF_S = 3600
"""How long a login form's CSRF token stays valid."""
_STATIC = Path(__file__).with_name("static")
_PAGE = (_STATIC / "dashboard.html").read_text()
_LOGIN = (_STATIC / "dashboard_login.html").read_text()
TOP_ADAPTERS = 10
_FALLBACK_SESSIONS = "royalty.dashboard_sessions"


# --- sessions ---------------------------------------------------------------------------------
def _sessions(request: Request[Any, Any, Any]) -> DashboardSessions:
    """The services' session store; without one (a bare test harness), one in memory per app."""
    store = services_of(request).dashboard_sessions
    if store is not None:
        return store
    state = request.app.state
    if _FALLBACK_SESSIONS not in state:
        state[_FALLBACK_SESSIONS] = InMemoryDashboardSessions()
    fallback: DashboardSessions = state[_FALLBACK_SESSIONS]
    return fallback


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "API keys cannot be checked right now; please retry shortly.",
        code="auth_unavailable",
        headers={"Retry-After": "2"},
    )


async def _session_key(request: Request[Any, Any, Any]) -> KeyInfo | None:
    """The admin key of the request's live dashboard session, or None."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    try:
        info = await _sessions(request).lookup(session_id)
    except KeyStoreUnavailable:
        raise _unavailable() from None
    return info if info is not None and "admin" in info.scopes else None


def _secure(request: Request[Any, Any, Any]) -> bool:
    """https as the server saw it (scope scheme: the socket's, or a trusted proxy's word)."""
    return request.scope.get("scheme") == "https"


def _cookie(request: Request[Any, Any, Any], name: str, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        path=COOKIE_PATH,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def logout_token(session_id: str) -> str:
    """The sign-out form's CSRF token: bound to the session, unknowable without its id."""
    return hashlib.sha256(b"royalty-dashboard-logout\0" + session_id.encode()).hexdigest()


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and secrets.compare_digest(str(a).encode(), str(b).encode())


def _html(
    body: str, status: int = 200, nonce: str | None = None, cookies: list[Cookie] | None = None
) -> Response[str]:
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
        cookies=cookies or [],
    )


def _login_page(request: Request[Any, Any, Any], message: str, status: int) -> Response[str]:
    """The sign-in form, with a fresh CSRF token in it and in its cookie."""
    nonce = secrets.token_urlsafe(16)
    csrf = secrets.token_urlsafe(32)
    body = (
        _LOGIN.replace("{{nonce}}", nonce)
        .replace("{{csrf}}", csrf)
        .replace("{{message}}", _escape(message))
    )
    return _html(body, status, nonce, [_cookie(request, CSRF_COOKIE, csrf, CSRF_S)])


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _form(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _gone(name: str) -> Cookie:
    return Cookie(key=name, value="", path=COOKIE_PATH, max_age=0, httponly=True, samesite="strict")


def _back_to_dashboard(cookies: list[Cookie]) -> Response[str]:
    return Response("", status_code=303, headers={"Location": "/dashboard"}, cookies=cookies)


# --- routes -----------------------------------------------------------------------------------
@get("/dashboard", include_in_schema=False)
async def dashboard_page(request: Request[Any, Any, Any]) -> Response[str]:
    if await _session_key(request) is None:
        return _login_page(request, "Sign in with an API key that has the admin scope.", 401)
    nonce = secrets.token_urlsafe(16)
    csrf = logout_token(request.cookies[COOKIE])
    return _html(_PAGE.replace("{{nonce}}", nonce).replace("{{csrf}}", csrf), 200, nonce)


@post("/dashboard/login", include_in_schema=False, status_code=303)
async def dashboard_login(request: Request[Any, Any, Any]) -> Response[str]:
    form = _form(await read_body(request))
    if not _same(form.get("csrf"), request.cookies.get(CSRF_COOKIE)):
        return _login_page(request, "The sign-in form expired; please sign in again.", 403)
    key = form.get("key", "").strip()
    if not key:
        return _login_page(request, "Enter an API key.", 401)
    try:
        info = await services_of(request).auth.authenticate(key)
    except KeyStoreUnavailable:
        return _login_page(request, "API keys cannot be checked right now; please retry.", 503)
    if info is None:
        return _login_page(request, "Incorrect API key.", 401)
    if "admin" not in info.scopes:
        return _login_page(request, "This key lacks the admin scope the dashboard requires.", 403)
    sessions = _sessions(request)
    try:
        if old := request.cookies.get(COOKIE):  # a new sign-in never reuses a session id
            await sessions.delete(old)
        session_id = await sessions.create(info)
    except KeyStoreUnavailable:
        return _login_page(request, "API keys cannot be checked right now; please retry.", 503)
    return _back_to_dashboard(
        [_cookie(request, COOKIE, session_id, ABSOLUTE_S), _gone(CSRF_COOKIE)]
    )


@post("/dashboard/logout", include_in_schema=False, status_code=303)
async def dashboard_logout(request: Request[Any, Any, Any]) -> Response[str]:
    session_id = request.cookies.get(COOKIE)
    form = _form(await read_body(request))
    if session_id and not _same(form.get("csrf"), logout_token(session_id)):
        raise Forbidden("The sign-out form does not belong to this session.", code="csrf_failed")
    if session_id:
        try:
            await _sessions(request).delete(session_id)
        except KeyStoreUnavailable:
            raise _unavailable() from None
    return _back_to_dashboard([_gone(COOKIE)])


@get("/dashboard/data", include_in_schema=False)
async def dashboard_data(request: Request[Any, Any, Any]) -> Response[bytes]:
    if await _session_key(request) is None:
        if request.headers.get("authorization") is None:
            if request.cookies.get(COOKIE):
                raise Unauthorized(
                    "The dashboard session has ended; sign in again at /dashboard.",
                    code="session_expired",
                )
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
