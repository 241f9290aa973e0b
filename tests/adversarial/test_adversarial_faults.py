"""Issue 13's adversarial suite, through HTTP, on the real stack: one `royalty up` (supervised
vLLM engine, the machine's PostgreSQL, the usage log on a tmpfs) takes, in order, poison
inputs on every public route, a 20 s database outage under load, a full usage-log disk under
load, and a `kill -9` of its whole process group under streaming load. After each fault,
every response a client received whole has exactly one usage row, nothing is duplicated,
money is conserved and `royalty ledger check` passes. Each scenario adds a row to the table
printed at the end of the run (and written under the session's tmp dir)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter

import asyncpg
import httpx
import openai
import pytest
from adv_checks import Outcome, Row, Scoreboard, Tally, verify_trail
from adv_load import Client, Load, complete_once
from adv_poison import check_followups, make_world, run_cases
from adv_poison_cases import CONTROL
from adv_poison_routes import all_cases, record_text
from adv_stack import Stack, wait_gone
from sqlalchemy.engine import make_url
from support.pg import _DB_NAME
from support.procs import alive, port_free

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(3000)]

OUTAGE_S = 20.0


def _five_xx_summary(outcomes: list[Outcome]) -> str:
    by = Counter(f"{o.status} {o.kind} {_code(o.error)}" for o in outcomes)
    return ", ".join(f"{n}× {k}" for k, n in by.most_common())


def _code(error: str) -> str:
    m = re.search(r'"code":\s*"?([A-Za-z_]+)', error)
    return m.group(1) if m else error[:60]


def _check_tally_requests(tally: Tally, since: float, until: float) -> list[str]:
    """Requests that got no HTTP answer at all (refused, reset, or hung past the timeout)."""
    lost = tally.no_status(since, until)
    if not lost:
        return []
    return [f"{len(lost)} requests got no HTTP answer, e.g. {lost[0].error[:200]}"]


# --- 1. poison ------------------------------------------------------------------------------------
async def test_poison_inputs_on_every_route_never_stop_the_trail(
    stack: Stack, clients: list[Client], scoreboard: Scoreboard
) -> None:
    notes = [stack.ensure_up()]
    keys = {
        "inference": stack.key("adv-poison", "inference", credit_micros=1_000_000_000),
        "contributor": stack.key("adv-contributor", "contributor"),
        "curator": stack.key("adv-curator", "curator"),
        "admin": stack.key("adv-admin", "admin"),
    }
    followup = Client("adv-followup", stack.key("adv-followup", "inference",
                                                credit_micros=1_000_000_000))  # fmt: skip
    sdk = openai.AsyncOpenAI(base_url=stack.base_url + "/v1", api_key="unset", max_retries=0,
                             timeout=60)  # fmt: skip
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
        world = await make_world(http, keys, record_text)
        cases = all_cases(world)
        warm = await complete_once(sdk, followup, "recipes", 1, Tally())
        assert warm.status == 200, f"the stack does not serve before any poison: {warm.error}"
        run = await run_cases(stack.base_url, cases, keys, followup, sdk, stack.gateway.running)
        report = scoreboard.path.with_name("poison-cases.tsv")
        run.write(report)
        ship, post = await check_followups(stack.database_url, run, http, followup.key)
    await sdk.close()
    verdict = await verify_trail(stack.database_url, run.tally, ["adv-poison", "adv-followup"],
                                 holds_must_clear=True)  # fmt: skip
    five = [r for r in run.results if r.status is not None and r.status >= 500]
    five += [r for r in run.results if r.followup and (r.followup.status or 0) >= 500]
    served = sum(
        1
        for r in run.results
        if r.case.inference and r.case.expect != CONTROL and r.status and r.status < 300
    )
    notes += [f"{len(cases)} poison cases, each followed by a normal request",
              f"{served} poison inference requests served (free text) and billed",
              f"worst lag after response: shipped {ship:.1f}s, posted {post:.1f}s",
              f"per-case answers: {report.name}"]  # fmt: skip
    scoreboard.add(Row("poison inputs, every route", len(cases) + len(run.results),
                       verdict.completed, verdict.with_one_row, verdict.duplicates, len(five),
                       verdict.money_ok, "; ".join(n for n in notes if n)))  # fmt: skip
    failures = run.failures + verdict.failures
    assert not failures, f"{len(failures)} failures (answers in {report}):\n" + "\n".join(
        failures[:80]
    )


# --- 2. database outage ---------------------------------------------------------------------------
async def _cut_database(admin_url: str, db_url: str, seconds: float) -> tuple[int, str]:
    """Refuse new connections to the stack's database and terminate existing ones for
    `seconds`, then let them back; returns (backends terminated, what a connect attempt saw)."""
    name = make_url(db_url).database
    assert name is not None and _DB_NAME.match(name)
    conn = await asyncpg.connect(admin_url)
    terminated = 0
    refused = ""
    try:
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            terminated += len(rows)
            if not refused:
                try:
                    probe = await asyncpg.connect(db_url, timeout=3)
                    await probe.close()
                    refused = "a connection got through"
                except (OSError, asyncpg.PostgresError) as e:
                    refused = str(e)[:100]
            await asyncio.sleep(0.5)
    finally:
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await conn.close()
    return terminated, refused


async def test_database_outage_under_load(
    stack: Stack, clients: list[Client], scoreboard: Scoreboard, postgres_server_url: str
) -> None:
    notes = [stack.ensure_up()]
    tally = Tally()
    failures: list[str] = []
    load = await Load(stack.base_url, clients, tally, streams=2, plain=2).start()
    try:
        await asyncio.sleep(6)  # every key is used (so seen and cached) before the cut
        seen = {o.account for o in tally.outcomes if o.status == 200}
        assert seen == {c.account for c in clients}, f"keys not all served before the cut: {seen}"
        t_cut = time.time()
        terminated, refused = await _cut_database(postgres_server_url, stack.database_url,
                                                  OUTAGE_S)  # fmt: skip
        t_back = time.time()
        await asyncio.sleep(10)
    finally:
        await load.stop()
    during = [o for o in tally.outcomes if t_cut <= o.started <= t_back]
    served_during = sum(o.whole for o in during)
    five_during, five_all = tally.five_xx(t_cut, t_back), tally.five_xx()
    notes += [f"outage {t_back - t_cut:.0f}s: {terminated} backends terminated, new "
              f"connections refused ({refused})",
              f"{len(during)} requests sent during it, {served_during} served whole, "
              f"{len(five_during)} 5xx"]  # fmt: skip
    if five_all:
        failures.append(
            f"{len(five_all)} 5xx for keys already seen (goal: none), {len(five_during)} sent "
            f"during the outage: {_five_xx_summary(five_all)}"
        )
    failures += _check_tally_requests(tally, 0, float("inf"))
    verdict = await verify_trail(stack.database_url, tally, [c.account for c in clients],
                                 holds_must_clear=True)  # fmt: skip
    failures += verdict.failures
    scoreboard.add(Row(f"database cut off {OUTAGE_S:.0f}s under load", len(tally.outcomes),
                       verdict.completed, verdict.with_one_row, verdict.duplicates, len(five_all),
                       verdict.money_ok, "; ".join(n for n in notes if n)))  # fmt: skip
    assert not failures, "\n".join(failures)


# --- 3. usage log disk full -----------------------------------------------------------------------
async def _poll_health(base_url: str, seen: list[tuple[float, int | None, str]],
                       stop: asyncio.Event) -> None:  # fmt: skip
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        while not stop.is_set():
            try:
                r = await http.get("/healthz")
                seen.append((time.time(), r.status_code, r.text[:300]))
            except httpx.HTTPError as e:
                seen.append((time.time(), None, str(e)))
            await asyncio.sleep(0.5)


async def test_usage_log_disk_full_under_load(
    stack: Stack, clients: list[Client], scoreboard: Scoreboard
) -> None:
    if not stack.tmpfs.mounted:
        reason = f"no tmpfs for the usage log: {stack.tmpfs.reason}"
        scoreboard.add(Row("usage log disk full under load", 0, 0, 0, 0, 0, None, reason))
        pytest.skip(reason)
    notes = [stack.ensure_up()]
    tally = Tally()
    failures: list[str] = []
    health: list[tuple[float, int | None, str]] = []
    stop_health = asyncio.Event()
    poller = asyncio.create_task(_poll_health(stack.base_url, health, stop_health))
    load = await Load(stack.base_url, clients, tally, streams=2, plain=2).start()
    filler = None
    recovered_after = None
    try:
        await asyncio.sleep(4)
        filler = await asyncio.to_thread(stack.tmpfs.fill)
        t_full = time.time()
        await asyncio.sleep(10)
        filler.unlink()
        t_free = time.time()
        deadline = t_free + 30
        while time.time() < deadline:
            ok_after = [o for o in tally.whole() if o.started > t_free]
            healthy = [h for h in health if h[0] > t_free and h[1] == 200]
            if ok_after and healthy:
                recovered_after = max(min(o.ended for o in ok_after), healthy[0][0]) - t_free
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(3)
    finally:
        if filler is not None:
            filler.unlink(missing_ok=True)
        await load.stop()
        stop_health.set()
        await poller
    fault = [o for o in tally.outcomes if t_full <= o.started <= t_free]
    refused = [o for o in fault if o.status == 503]
    five = tally.five_xx()
    if not refused:
        failures.append(f"no request was refused with 503 while the usage log's disk was full "
                        f"({len(fault)} sent, {sum(o.whole for o in fault)} served whole)")  # fmt: skip
    unclear = [o for o in refused if not o.error_shape_ok]
    if unclear:
        failures.append(f"{len(unclear)} 503s not in OpenAI's error shape: {unclear[0].error}")
    not_503 = [o for o in five if o.status != 503]
    if not_503:
        failures.append(f"{len(not_503)} 5xx other than 503: {_five_xx_summary(not_503)}")
    outside = [o for o in five if o.status == 503 and not (t_full - 1 <= o.started <= t_free + 15)]
    if outside:
        failures.append(f"{len(outside)} 503s outside the fault: {_five_xx_summary(outside)}")
    sick = [h for h in health if t_full <= h[0] <= t_free and h[1] == 503]
    if not sick:
        failures.append("/healthz never answered 503 while the usage log's disk was full: "
                        f"{sorted({h[1] for h in health if t_full <= h[0] <= t_free})}")  # fmt: skip
    elif not any(re.search(r"usage[ _-]?log", h[2], re.I) for h in sick):
        failures.append(f"/healthz's 503 does not say the usage log is unhealthy: {sick[0][2]}")
    if recovered_after is None:
        failures.append("service did not resume within 30s of the space coming back "
                        f"(healthz after: {[h[1] for h in health if h[0] > t_free][-5:]})")  # fmt: skip
    failures += _check_tally_requests(tally, 0, t_full - 1)
    verdict = await verify_trail(stack.database_url, tally, [c.account for c in clients],
                                 holds_must_clear=True)  # fmt: skip
    failures += verdict.failures
    notes += [f"disk full {t_free - t_full:.0f}s: {len(fault)} requests, {len(refused)} refused "
              f"503, {sum(o.whole for o in fault)} served whole (each billed)",
              f"healthz 503 {len(sick)}×; resumed {recovered_after:.1f}s after space returned"
              if recovered_after is not None else "did not resume"]  # fmt: skip
    scoreboard.add(Row("usage log disk full under load", len(tally.outcomes), verdict.completed,
                       verdict.with_one_row, verdict.duplicates, len(five), verdict.money_ok,
                       "; ".join(n for n in notes if n)))  # fmt: skip
    assert not failures, "\n".join(failures)


# --- 4. kill -9 of the whole process group --------------------------------------------------------
async def test_kill_9_process_group_under_streaming_load(
    stack: Stack, clients: list[Client], scoreboard: Scoreboard
) -> None:
    notes = [stack.ensure_up()]
    failures: list[str] = []
    tally = Tally()
    engines = stack.engines()
    assert engines, "no supervised vLLM engine found for the stack's engine port"
    tree = stack.gateway.descendants()
    for e in engines:
        with contextlib.suppress(Exception):
            tree += e.children(recursive=True)
    tree = list({p.pid: p for p in [*tree, *engines]}.values())
    load = await Load(stack.base_url, clients, tally, streams=4, plain=1, max_tokens=24).start()
    try:
        await asyncio.sleep(8)
        stack.gateway.kill9_group()
        t_kill = time.time()
    finally:
        await load.stop()
    before = [o for o in tally.whole() if o.ended <= t_kill]
    assert before, "no response completed before the kill: nothing to check"
    in_flight = [o for o in tally.outcomes if not o.whole and o.started < t_kill]
    left = await asyncio.to_thread(wait_gone, tree, 10.0)
    left_engines = alive(stack.engines())
    if left_engines:
        failures.append(
            f"{len(left_engines)} vLLM engine processes outlived their supervisor 10s after "
            f"kill -9 of its process group: "
            + "; ".join(f"pid {p.pid} {' '.join(p.cmdline())[:160]}" for p in left_engines)
        )
    others = [p for p in left if p not in left_engines]
    if others:
        failures.append(f"{len(others)} other child processes outlived the kill: "
                        + "; ".join(f"pid {p.pid} {p.name()}" for p in others))  # fmt: skip
    free = port_free(stack.engine_port)
    notes.append(f"engine port {'free' if free else 'still bound'} after the kill")

    started = time.monotonic()
    try:
        await asyncio.to_thread(stack.start, 900)
    except (TimeoutError, RuntimeError) as e:
        failures.append(f"the restart on the same data dir and database failed: {e}\n"
                        f"{stack.gateway.log()[-2000:]}")  # fmt: skip
        scoreboard.add(Row("kill -9 of royalty up's process group", len(tally.outcomes),
                           len(before), 0, 0, len(tally.five_xx()), False,
                           "restart failed"))  # fmt: skip
        raise AssertionError("\n".join(failures)) from None
    notes.append(f"restart served after {time.monotonic() - started:.0f}s")
    sdk = openai.AsyncOpenAI(base_url=stack.base_url + "/v1", api_key="unset", max_retries=0,
                             timeout=60)  # fmt: skip
    after = await complete_once(sdk, clients[0], "recipes", 4, tally)
    await sdk.close()
    if after.status != 200:
        failures.append(f"the restarted stack did not serve: {after.status} {after.error}")
    if left_engines and not alive(left_engines):
        notes.append("the restart reclaimed the orphaned engine's port")
    verdict = await verify_trail(stack.database_url, tally, [c.account for c in clients],
                                 holds_must_clear=False)  # fmt: skip
    failures += verdict.failures
    notes += verdict.notes

    tree = stack.gateway.descendants() + stack.engines()
    code = stack.gateway.stop()
    if code != 0:
        failures.append(f"SIGTERM stop of the restarted stack exited {code}")
    left = await asyncio.to_thread(wait_gone, tree + stack.engines(), 15.0)
    if left:
        failures.append(f"{len(left)} processes left behind after the SIGTERM stop: "
                        + "; ".join(f"pid {p.pid} {' '.join(p.cmdline())[:120]}" for p in left))  # fmt: skip
    notes.insert(0, f"{len(before)} whole before the kill, {len(in_flight)} cut mid-flight")
    scoreboard.add(Row("kill -9 of royalty up's process group", len(tally.outcomes),
                       verdict.completed, verdict.with_one_row, verdict.duplicates,
                       len(tally.five_xx()), verdict.money_ok,
                       "; ".join(n for n in notes if n)))  # fmt: skip
    assert not failures, "\n".join(failures)
