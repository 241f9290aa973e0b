"""Running the poison cases: each one, then a normal request whose usage must be shipped,
posted and attributed within seconds (a poison that stops the trail shows up as the first
follow-up that never lands)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from adv_checks import Outcome, Tally, error_shape_ok, postings, usage_rows
from adv_load import Client, complete_once
from adv_poison_cases import CONTROL, HTML, LONG, REJECT, Case
from adv_poison_routes import World

SHIP_WITHIN_S = 10.0
POST_WITHIN_S = 15.0
POISON_TIMEOUT_S = 60.0


@dataclass
class CaseResult:
    case: Case
    status: int | None
    code: str
    seconds: float
    message: str
    failure: str = ""
    followup: Outcome | None = None


@dataclass
class PoisonRun:
    tally: Tally = field(default_factory=Tally)
    results: list[CaseResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def write(self, path: Path) -> None:
        lines = ["case\texpect\tstatus\tcode\tseconds\tfollow-up\tfailure\tmessage"]
        for r in self.results:
            f = r.followup
            lines.append(
                f"{r.case.name}\t{r.case.expect}\t{r.status}\t{r.code}\t{r.seconds:.2f}\t"
                f"{f.status if f else ''} {f.request_id if f else ''}\t{r.failure[:200]}\t"
                f"{r.message}"
            )
        path.write_text("\n".join(lines) + "\n")


async def make_world(http: httpx.AsyncClient, keys: dict[str, str], text: Any) -> World:
    """An open datanet with one accepted record and a snapshot, and a curated one with a
    pending record, made through the API by the suite's curator and contributor."""

    def h(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[who]}"}

    async def ok(r: httpx.Response) -> Any:
        assert r.status_code in (200, 201), f"{r.request.method} {r.request.url}: {r.text}"
        return r.json()

    stamp = f"{time.time_ns():x}"
    open_dn = await ok(await http.post("/v1/datanets", headers=h("curator"), json={
        "name": f"adv-open-{stamp}", "licence": "CC0-1.0", "acceptance": "open"}))  # fmt: skip
    curated = await ok(await http.post("/v1/datanets", headers=h("curator"), json={
        "name": f"adv-curated-{stamp}", "licence": "CC0-1.0", "acceptance": "curated"}))  # fmt: skip
    await ok(await http.post(f"/v1/datanets/{open_dn['id']}/records", headers=h("contributor"),
                             json={"text": text()}))  # fmt: skip
    snap = await ok(await http.post(f"/v1/datanets/{open_dn['id']}/snapshots",
                                    headers=h("curator")))  # fmt: skip
    pending = await ok(await http.post(f"/v1/datanets/{curated['id']}/records",
                                       headers=h("contributor"), json={"text": text()}))  # fmt: skip
    return World(int(open_dn["id"]), int(curated["id"]), int(pending["id"]), str(snap["id"]))


def _headers(case: Case, keys: dict[str, str]) -> dict[str, str]:
    h = {"Content-Type": case.content_type}
    if case.who == "long-key":
        h["Authorization"] = f"Bearer {LONG}"
    elif case.who != "none":
        h["Authorization"] = f"Bearer {keys[case.who]}"
    return h


def judge(case: Case, status: int | None, body: bytes, error: str) -> str:
    """Why the answer breaks the case's contract ("" if it does not)."""
    if status is None:
        return f"no answer: {error}"
    if status >= 500:
        return f"{status}: {body[:300].decode(errors='replace')}"
    if case.expect == CONTROL:
        ok = 200 <= status < 300
        return "" if ok else f"control refused ({status}: {body[:300].decode(errors='replace')})"
    if case.expect == HTML:
        return ""
    if status >= 400:
        return (
            "" if error_shape_ok(body) else f"{status} not in OpenAI's error shape: {body[:200]!r}"
        )
    if case.expect == REJECT:
        return f"accepted with {status}; expected a 4xx: {body[:200].decode(errors='replace')}"
    if case.name.startswith("bulk JSONL [good,"):
        data = json.loads(body).get("data", [])
        if len(data) != 2:
            return f"bulk upload answered {len(data)} line results for 2 lines: {body[:300]!r}"
    return ""


async def run_cases(
    base_url: str,
    cases: list[Case],
    keys: dict[str, str],
    followup: Client,
    sdk: openai.AsyncOpenAI,
    alive: Any,
) -> PoisonRun:
    run = PoisonRun()
    async with httpx.AsyncClient(base_url=base_url, timeout=POISON_TIMEOUT_S) as http:
        for case in cases:
            started = time.time()
            status: int | None = None
            body = b""
            error = ""
            rid = None
            try:
                r = await http.request(case.method, case.path, content=case.body,
                                       headers=_headers(case, keys))  # fmt: skip
                status, body, rid = r.status_code, r.content, r.headers.get("x-request-id")
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
            seconds = time.time() - started
            code = message = ""
            if status is not None and status >= 400:
                try:
                    err = json.loads(body)["error"]
                    code, message = str(err.get("code")), str(err.get("message"))[:200]
                except (ValueError, KeyError, TypeError, AttributeError):
                    code = "?"
            message = message.replace("\t", " ").replace("\n", " ")
            failure = judge(case, status, body, error)
            result = CaseResult(case, status, code, seconds, message, failure)
            run.results.append(result)
            if failure:
                run.failures.append(f"{case.name}: {failure}")
            if case.inference and status is not None and 200 <= status < 300:
                # Served: it must be billed like any other response.
                run.tally.add(Outcome("poison", status, rid, True, started, time.time(),
                                      "adv-poison"))  # fmt: skip
            result.followup = await complete_once(sdk, followup, "recipes", 1, run.tally)
            if result.followup.status != 200:
                run.failures.append(
                    f"after {case.name}: the normal request got {result.followup.status} "
                    f"{result.followup.error[:200]}"
                )
                if not alive():
                    run.failures.append(f"the gateway died after {case.name}")
                    break
    return run


async def check_followups(
    db: str, run: PoisonRun, http: httpx.AsyncClient, key: str, timeout_s: float = 45.0
) -> tuple[float, float]:
    """Each follow-up shipped within SHIP_WITHIN_S of its response, posted within
    POST_WITHIN_S and attributed; returns the worst shipping and posting lags seen."""
    pairs = [(r.case.name, r.followup) for r in run.results if r.followup and r.followup.whole]
    ids = [f.request_id for _, f in pairs if f.request_id]
    deadline = time.monotonic() + timeout_s
    while True:
        rows, posts = await usage_rows(db, ids), await postings(db, ids)
        if (all(i in rows and i in posts for i in ids)) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    worst_ship = worst_post = 0.0
    first_stuck = ""
    for name, f in pairs:
        rid = f.request_id or ""
        row = rows.get(rid)
        post = posts.get(rid)
        if not row or not post:
            first_stuck = first_stuck or name
            what = "shipped" if not row else "posted"
            run.failures.append(f"follow-up {rid} after {name!r} never {what}")
            continue
        ship = row[0]["recorded_at"].timestamp() - f.ended
        posted = post[0]["created_at"].timestamp() - f.ended if post[0]["created_at"] else 0.0
        worst_ship, worst_post = max(worst_ship, ship), max(worst_post, posted)
        if ship > SHIP_WITHIN_S:
            run.failures.append(f"follow-up after {name!r} shipped {ship:.1f}s after its response")
        if posted > POST_WITHIN_S:
            run.failures.append(f"follow-up after {name!r} posted {posted:.1f}s after its response")
        a = await http.get(f"/v1/attributions/{rid}", headers={"Authorization": f"Bearer {key}"})
        if a.status_code != 200:
            run.failures.append(
                f"follow-up after {name!r}: attribution {a.status_code} {a.text[:200]}"
            )
    if first_stuck:
        run.failures.insert(0, f"the money trail stopped after poison case {first_stuck!r}")
    return worst_ship, worst_post
