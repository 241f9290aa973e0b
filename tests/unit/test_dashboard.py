"""`/dashboard`: admin-only login by cookie, the JSON it polls, and the page itself rendered in
real headless Chromium (Debian's `chromium`, driven by Playwright) after known traffic: the
numbers on the page equal the metrics, and the screenshot's charts have drawn pixels.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from support.gateway_harness import Harness, make_harness

from gateway.config import HttpSettings
from gateway.dashboard import COOKIE, CSRF_COOKIE, _quantile, summarise
from gateway.dashboard_sessions import ABSOLUTE_S, IDLE_S, InMemoryDashboardSessions
from metering import metrics as metering_metrics
from royalty.server import uvicorn_config
from royalty.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}


@pytest.fixture
async def gw():
    h = make_harness()
    async with AsyncTestClient(app=h.app()) as client:
        client.h = h  # type: ignore[attr-defined]
        client.admin = await h.key("admin", account="ops")  # type: ignore[attr-defined]
        client.user = await h.key("inference")  # type: ignore[attr-defined]
        yield client


async def test_page_without_a_session_shows_the_login_form(gw) -> None:
    r = await gw.get("/dashboard")
    assert r.status_code == 401
    assert '<form method="post" action="/dashboard/login"' in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    # A bearer header is not a browser session: the page itself still asks to sign in.
    r = await gw.get("/dashboard", headers={"Authorization": f"Bearer {gw.admin}"})
    assert r.status_code == 401


CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


async def login_form(client: AsyncTestClient) -> str:  # type: ignore[type-arg]
    """Open the sign-in page (which sets the CSRF cookie); returns the form's CSRF token."""
    page = await client.get("/dashboard")
    assert page.status_code == 401
    m = CSRF_FIELD.search(page.text)
    assert m is not None, page.text
    return m.group(1)


async def sign_in(client: AsyncTestClient, key: str, **kw: Any) -> Any:  # type: ignore[type-arg]
    csrf = await login_form(client)
    return await client.post(
        "/dashboard/login", data={"key": key, "csrf": csrf}, follow_redirects=False, **kw
    )


def set_cookies(response: Any) -> dict[str, str]:
    """name -> the whole Set-Cookie header, for every cookie the response sets."""
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


async def test_login_needs_an_admin_key_and_sets_a_strict_httponly_session_cookie(gw) -> None:
    for key, status in (("", 401), ("rk-wrong", 401), (gw.user, 403)):
        r = await sign_in(gw, key)
        assert r.status_code == status, key
        assert COOKIE not in set_cookies(r)  # no session; only a fresh CSRF token
        if key:
            assert key not in r.text
    r = await sign_in(gw, gw.admin)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = set_cookies(r)[COOKIE]
    for part in ("HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age="):
        assert part.lower() in cookie.lower(), part
    # The cookie holds a random session id, never the key.
    session_id = gw.cookies.get(COOKIE)
    assert session_id and gw.admin not in cookie and session_id != gw.admin
    assert len(session_id) >= 40
    assert "secure" not in cookie.lower()  # plain http here

    page = await gw.get("/dashboard")
    assert page.status_code == 200 and 'id="chart-traffic"' in page.text
    assert gw.admin not in page.text and session_id not in page.text
    data = await gw.get("/dashboard/data")
    assert data.status_code == 200 and "requests" in data.json()

    # Sign-out needs the page's CSRF token, deletes the session and clears the cookie.
    r = await gw.post("/dashboard/logout", data={"csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    assert (await gw.get("/dashboard/data")).status_code == 200  # still signed in
    token = CSRF_FIELD.search(page.text).group(1)  # type: ignore[union-attr]
    out = await gw.post("/dashboard/logout", data={"csrf": token}, follow_redirects=False)
    assert out.status_code == 303 and "max-age=0" in set_cookies(out)[COOKIE].lower()
    gw.cookies.set(COOKIE, session_id, path="/dashboard")  # replaying the old cookie
    r = await gw.get("/dashboard/data")
    assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired"
    assert (await gw.get("/dashboard")).status_code == 401


async def test_a_client_header_cannot_claim_https(gw) -> None:
    """X-Forwarded-Proto from a client is not the connection's scheme: no Secure flag on plain
    http (uvicorn rewrites the scheme only for ROYALTY_TRUSTED_PROXIES)."""
    r = await sign_in(gw, gw.admin, headers={"x-forwarded-proto": "https"})
    assert r.status_code == 303
    assert "secure" not in set_cookies(r)[COOKIE].lower()


async def test_login_is_refused_without_its_csrf_token(gw) -> None:
    await login_form(gw)  # the CSRF cookie is set ...
    for form in ({"key": gw.admin}, {"key": gw.admin, "csrf": "guessed"}):
        r = await gw.post("/dashboard/login", data=form, follow_redirects=False)
        assert r.status_code == 403 and COOKIE not in set_cookies(r), form
    gw.cookies.clear()  # ... and a token without its cookie (another site's form) is refused
    csrf = await login_form(gw)
    gw.cookies.clear()
    r = await gw.post("/dashboard/login", data={"key": gw.admin, "csrf": csrf},
                      follow_redirects=False)  # fmt: skip
    assert r.status_code == 403 and COOKIE not in set_cookies(r)


async def test_a_raw_key_in_the_cookie_is_no_session(gw) -> None:
    """What the old cookie held (the admin key itself) opens nothing now."""
    gw.cookies.set(COOKIE, gw.admin, path="/dashboard")
    assert (await gw.get("/dashboard")).status_code == 401
    assert (await gw.get("/dashboard/data")).status_code == 401


async def test_sessions_end_when_idle_or_old() -> None:
    now = [0.0]
    h = make_harness()
    sessions = InMemoryDashboardSessions(clock=lambda: now[0])
    h.services.dashboard_sessions = sessions
    admin = await h.key("admin", account="ops")
    async with AsyncTestClient(app=h.app()) as client:
        assert (await sign_in(client, admin)).status_code == 303
        now[0] += IDLE_S - 60  # used just before going idle too long: still alive
        assert (await client.get("/dashboard/data")).status_code == 200
        now[0] += IDLE_S + 1
        assert (await client.get("/dashboard/data")).status_code == 401
        client.cookies.clear()
        start = now[0]
        assert (await sign_in(client, admin)).status_code == 303
        for hour in range(1, 25):  # used every hour, never idle ...
            now[0] = start + hour * 3600
            assert (await client.get("/dashboard/data")).status_code == 200, hour
        now[0] = start + ABSOLUTE_S + 3600  # ... and still over after 24 h
        assert (await client.get("/dashboard/data")).status_code == 401
        assert len(sessions) == 1  # the expired one was swept at the second sign-in


async def test_data_endpoint_scopes(gw) -> None:
    r = await gw.get("/dashboard/data")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    r = await gw.get("/dashboard/data", headers={"Authorization": f"Bearer {gw.user}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    gw.cookies.set(COOKIE, "not-a-session", path="/dashboard")
    assert (await gw.get("/dashboard/data")).status_code == 401
    gw.cookies.clear()
    r = await gw.get("/dashboard/data", headers={"Authorization": f"Bearer {gw.admin}"})
    assert r.status_code == 200


async def test_data_counts_move_by_the_traffic_sent(gw) -> None:
    hdr = {"Authorization": f"Bearer {gw.admin}"}
    before = (await gw.get("/dashboard/data", headers=hdr)).json()
    for model in ("recipes", "recipes", "legal", "no-such-model"):
        await gw.post("/v1/chat/completions", json=chat(model), headers=hdr)
    metering_metrics.credits_minted("datanet_owner", 250)
    after = (await gw.get("/dashboard/data", headers=hdr)).json()
    assert after["requests"]["total"] - before["requests"]["total"] == 4
    assert after["requests"]["error"] - before["requests"]["error"] == 1
    out = sum(r.completion_tokens for r in gw.h.records)
    assert after["tokens"]["completion"] - before["tokens"]["completion"] == out == 15
    cred = after["credits"].get("datanet_owner", 0) - before["credits"].get("datanet_owner", 0)
    assert cred == 250
    assert {a["adapter"] for a in after["top_adapters"]} >= {"recipes", "legal"}


def test_quantile_interpolates_like_histogram_quantile() -> None:
    # 10 observations: 4 in (0, 0.1], 4 in (0.1, 0.2], 2 in (0.2, +Inf)
    buckets = {0.1: 4.0, 0.2: 8.0, float("inf"): 10.0}
    assert _quantile(buckets, 0.5) == pytest.approx(0.125)
    assert _quantile(buckets, 0.2) == pytest.approx(0.05)
    assert _quantile(buckets, 0.99) == pytest.approx(0.2)  # the +Inf bucket: its lower bound
    assert _quantile({0.1: 0.0, float("inf"): 0.0}, 0.5) is None
    assert summarise([])["requests"]["latency_p50_ms"] is None


# --- the page in a real browser ---------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def served(h: Harness, trusted_proxies: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """The app under uvicorn, configured as `royalty up` configures it."""
    port = _free_port()
    http = HttpSettings(host="127.0.0.1", port=port, trusted_proxies=trusted_proxies)
    settings = Settings(http=http)
    server = uvicorn.Server(uvicorn_config(h.app(), settings))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize(("trusted", "secure"), [((), False), (("127.0.0.1",), True)])
async def test_secure_follows_a_trusted_proxy_only(trusted: tuple[str, ...], secure: bool) -> None:
    """Over a real socket: `X-Forwarded-Proto: https` makes the cookie Secure only when it
    comes from an address in ROYALTY_TRUSTED_PROXIES (here the client is 127.0.0.1)."""
    h = make_harness()
    admin = await h.key("admin", account="ops")
    async with served(h, trusted) as base, httpx.AsyncClient(base_url=base) as client:
        hdr = {"x-forwarded-proto": "https"}
        page = await client.get("/dashboard", headers=hdr)
        csrf = CSRF_FIELD.search(page.text).group(1)  # type: ignore[union-attr]
        assert ("secure" in set_cookies(page)[CSRF_COOKIE].lower()) is secure
        client.cookies.set(CSRF_COOKIE, page.cookies[CSRF_COOKIE])  # (httpx keeps Secure ones back)
        r = await client.post("/dashboard/login", data={"key": admin, "csrf": csrf}, headers=hdr)
        assert r.status_code == 303, r.text
        assert ("secure" in set_cookies(r)[COOKIE].lower()) is secure


def _metric_totals(text: str) -> tuple[int, int, list[str]]:
    """(inference requests, completion tokens, adapters by tokens) from /metrics text."""
    requests = tokens_out = 0.0
    by_adapter: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "royalty_inference_requests_total":
                requests += s.value
            elif s.name == "royalty_tokens_total":
                if s.labels["direction"] == "completion":
                    tokens_out += s.value
                if s.labels["adapter"]:
                    by_adapter[s.labels["adapter"]] += s.value
    order = [a for a, _ in sorted(by_adapter.items(), key=lambda kv: (-kv[1], kv[0]))]
    return int(requests), int(tokens_out), order


def _pixels_near(
    png: bytes, rgb: tuple[int, int, int], tol: int = 40, top_fraction: float = 1.0
) -> int:
    """Pixels within `tol` of `rgb`, counting only the top `top_fraction` of the image."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.crop((0, 0, img.width, int(img.height * top_fraction)))
    r0, g0, b0 = rgb
    return sum(
        1
        for r, g, b in img.getdata()  # type: ignore[misc]
        if abs(r - r0) <= tol and abs(g - g0) <= tol and abs(b - b0) <= tol
    )


async def polls_of(page) -> int:  # type: ignore[no-untyped-def]
    return int(await page.get_attribute("body", "data-polls") or 0)


async def wait_polls(page, n: int, within_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Polled from Python: the page's CSP (rightly) forbids the eval `wait_for_function` needs."""
    deadline = asyncio.get_running_loop().time() + within_s
    while await polls_of(page) < n:
        assert asyncio.get_running_loop().time() < deadline, "the page stopped polling"
        await asyncio.sleep(0.05)


def _keep_screenshot(png: bytes, tmp_path: Path) -> None:
    """In the test's tmp dir, and in $ROYALTY_ARTIFACTS when set (to look at it)."""
    for d in (tmp_path, os.environ.get("ROYALTY_ARTIFACTS")):
        if d:
            Path(d).mkdir(parents=True, exist_ok=True)
            (Path(d) / "dashboard.png").write_bytes(png)


def _browser_or_skip():  # type: ignore[no-untyped-def]
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            "no chromium: `make install` installs Debian's chromium with apt-get, which "
            "failed or was not run on this machine"
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - playwright is a dev dependency
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    return async_playwright


async def test_dashboard_in_headless_chromium_shows_the_metrics(tmp_path: Path) -> None:
    async_playwright = _browser_or_skip()
    h = make_harness()
    admin = await h.key("admin", account="ops")
    user = await h.key("inference")
    hdr = {"Authorization": f"Bearer {user}"}
    async with served(h) as base, AsyncTestClient(app=h.app()) as api:
        # Known traffic before the page opens: an adapter ranking and some credits.
        for model, n in (("recipes", 5), ("astronomy", 2), ("nope", 1)):
            for _ in range(n):
                await api.post("/v1/chat/completions", json=chat(model), headers=hdr)
        metering_metrics.credits_minted("contributor", 1500)
        metering_metrics.credits_minted("platform", 300)
        # Gauges are process-wide: an influence worker tested earlier in this process may have
        # left a queue depth; this gateway has no queue.
        metering_metrics.attribution_queue(0)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1100})
                problems: list[str] = []
                # Script errors and CSP violations; the login page's own 401/403 are expected.
                page.on(
                    "console",
                    lambda m: (
                        problems.append(m.text)
                        if m.type == "error" and not m.text.startswith("Failed to load resource")
                        else None
                    ),
                )
                page.on("pageerror", lambda e: problems.append(str(e)))

                await page.goto(base + "/dashboard")
                await page.fill("#key", user)  # not an admin: refused
                await page.click("#sign-in")
                assert "lacks the admin scope" in await page.inner_text("#message")
                await page.fill("#key", admin)
                await page.click("#sign-in")
                await page.wait_for_selector("#chart-traffic")
                cookies = await page.context.cookies()
                [session] = [c["value"] for c in cookies if c["name"] == COOKIE]
                assert [c["httpOnly"] for c in cookies if c["name"] == COOKIE] == [True]
                assert all(admin not in c["value"] for c in cookies)  # a session id, not the key
                assert admin not in await page.content()

                await page.goto(base + "/dashboard?interval_ms=250")
                await wait_polls(page, 2)
                # Traffic while the page watches, so the rate charts have something to draw.
                for _ in range(12):
                    await api.post("/v1/chat/completions", json=chat("recipes"), headers=hdr)
                    await asyncio.sleep(0.05)
                await wait_polls(page, await polls_of(page) + 3)

                metrics_text = (await api.get("/metrics")).text
                requests, tokens_out, adapters = _metric_totals(metrics_text)
                shown_requests = int(await page.get_attribute("#stat-requests", "data-value") or -1)
                shown_out = int(await page.get_attribute("#stat-tokens-out", "data-value") or -1)
                assert shown_requests == requests
                assert int((await page.inner_text("#stat-requests")).replace(",", "")) == requests
                assert shown_out == tokens_out
                labels = await page.eval_on_selector_all(
                    "#chart-adapters .bar", "bars => bars.map(b => b.dataset.label)"
                )
                assert labels == adapters[: len(labels)] and labels[0] == adapters[0]
                credit_kinds = await page.eval_on_selector_all(
                    "#chart-credits .bar", "bars => bars.map(b => b.dataset.label)"
                )
                assert {"contributor", "platform"} <= set(credit_kinds)

                shot = await page.screenshot(full_page=True)
                _keep_screenshot(shot, tmp_path)
                drawn = {
                    "chart-traffic": (47, 111, 216),
                    "chart-tokens": (138, 79, 216),
                    "chart-adapters": (47, 111, 216),
                    "chart-credits": (24, 160, 107),
                }
                for chart, colour in drawn.items():
                    png = await page.locator(f"#{chart}").screenshot()
                    assert _pixels_near(png, colour) > 150, chart
                    # Rates rose while the page watched: the lines leave the zero baseline
                    # (a flat line at zero lies in the bottom tenth of the chart).
                    assert _pixels_near(png, colour, top_fraction=0.75) > 40, chart
                # The backlog chart stays flat at zero (the fake's harness ships nothing):
                # its series hug the baseline.
                backlog = await page.locator("#chart-backlog").screenshot()
                assert _pixels_near(backlog, (47, 180, 216), top_fraction=0.75) == 0
                # And the whole page is not blank.
                assert _pixels_near(shot, (244, 245, 247), tol=3) < 0.95 * (1280 * 1100)

                # Sign out (the form carries its CSRF token): back to the sign-in form, and the
                # session is gone from the browser and from the server.
                await page.click("#sign-out")
                await page.wait_for_selector("#sign-in")
                assert COOKIE not in {c["name"] for c in await page.context.cookies()}
                api.cookies.set(COOKIE, session, path="/dashboard")  # replaying the old cookie
                r = await api.get("/dashboard/data")
                assert r.status_code == 401
                assert problems == []
            finally:
                await browser.close()
