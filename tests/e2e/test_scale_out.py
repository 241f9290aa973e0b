"""Scale-out on one machine: 2 gateway processes sharing one database, 2 vLLM CPU replicas.

A replica is killed with SIGKILL while both gateways serve load through the official OpenAI
SDK. Every request the client got a complete 200 for has exactly one usage record; no request
id is recorded twice; failures are clean 503s or stream error events in OpenAI's shape; the
surviving replica serves afterwards. Then a key's rpm is enforced across both gateways.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import asyncpg
import openai
import psutil
import pytest
from openai.types.chat import ChatCompletionMessageParam
from support.procs import Gateway, create_key, vllm_server

pytestmark = pytest.mark.e2e

MODELS = ["recipes", "legal", "astronomy", None]  # None: the base model


@dataclass
class Cluster:
    db: str
    gateways: list[Gateway]
    replicas: list[str]
    base: str


def kill9_listener(url: str) -> None:
    """SIGKILL the process group serving `url` (the vLLM server and its engine core)."""
    port = int(url.rsplit(":", 1)[1])
    pids = {c.pid for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid}  # fmt: skip
    assert pids, f"nobody listens on {port}"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(demo_models, tmp_path_factory, postgres_server_url) -> Iterator[Cluster]:
    from support.pg import create_database, drop_database

    db = asyncio.run(create_database(postgres_server_url))
    root = tmp_path_factory.mktemp("scale")
    base_path, base = str(demo_models.base_path), demo_models.base_name
    with (
        vllm_server(base_path, base, root / "vllm-0.log") as r0,
        vllm_server(base_path, base, root / "vllm-1.log") as r1,
    ):
        args = ["--engine-url", r0, "--engine-url", r1, "--models-dir", str(demo_models.root),
                "--database-url", db]  # fmt: skip
        # One at a time: the first runs the migrations and creates the demo world.
        gws = [Gateway(root / f"gw-{i}", args).start(timeout_s=1200) for i in range(2)]
        try:
            yield Cluster(db, gws, [r0, r1], base)
        finally:
            codes = [gw.stop() for gw in gws]
            assert codes == [0, 0], [gw.log()[-3000:] for gw in gws]
    asyncio.run(drop_database(postgres_server_url, db))


async def usage_rows(db: str, key_id: int | None = None) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db)
    try:
        q = "SELECT request_id, status, http_status, engine, completion_tokens FROM usage_events"
        if key_id is None:
            return list(await conn.fetch(q))
        return list(await conn.fetch(q + " WHERE key_id = $1", key_id))
    finally:
        await conn.close()


def wait_shipped(db: str, ids: set[str], timeout_s: float = 30) -> dict[str, list[asyncpg.Record]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = asyncio.run(usage_rows(db))
        by_id: dict[str, list[asyncpg.Record]] = {}
        for r in rows:
            by_id.setdefault(r["request_id"], []).append(r)
        if ids <= by_id.keys() or time.monotonic() > deadline:
            return by_id
        time.sleep(0.3)


@dataclass
class Outcome:
    request_id: str | None
    status: int  # HTTP status; 200 with broken=True: the stream ended with an error event
    broken: bool = False
    error: str | None = None


def one_request(client: openai.OpenAI, base: str, i: int) -> Outcome:
    model = MODELS[i % len(MODELS)] or base
    msgs: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": f"Tell me something, number {i}."}
    ]
    try:
        if i % 2:
            raw = client.chat.completions.with_raw_response.create(
                model=model,
                messages=msgs,
                max_tokens=8,
            )
            raw.parse()
            return Outcome(raw.headers.get("x-request-id"), raw.status_code)
        with client.chat.completions.with_streaming_response.create(
            model=model,
            messages=msgs,
            max_tokens=16,
            stream=True,
        ) as resp:
            rid = resp.headers.get("x-request-id")
            try:
                for _ in resp.parse():
                    pass
            except openai.APIError as e:  # an error event inside the 200 stream
                assert e.message, e
                return Outcome(rid, 200, broken=True, error=e.message)
            return Outcome(rid, resp.status_code)
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        assert e.status_code == 503, (e.status_code, e.body)
        assert body.get("message") and body.get("type"), e.body  # OpenAI's error shape
        return Outcome(e.response.headers.get("x-request-id"), e.status_code, error=e.message)


def test_killing_a_replica_under_load_loses_and_doubles_nothing(cluster: Cluster) -> None:
    key = create_key(cluster.db, "scale-load", "--rpm", "100000", "--tpm", "100000000")
    clients = [openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0,
                             timeout=120) for gw in cluster.gateways]  # fmt: skip
    done = threading.Event()
    completed = 0
    lock = threading.Lock()

    def run(i: int) -> Outcome:
        nonlocal completed
        out = one_request(clients[i % 2], cluster.base, i)
        with lock:
            completed += 1
        return out

    def killer() -> None:
        while completed < 12 and not done.is_set():
            time.sleep(0.05)
        kill9_listener(cluster.replicas[0])

    with ThreadPoolExecutor(6) as pool:
        kill = pool.submit(killer)
        outcomes = list(pool.map(run, range(60)))
        done.set()
        kill.result()

    # The survivor serves through both gateways afterwards (the dead one is marked down).
    after = [one_request(clients[i % 2], cluster.base, i) for i in range(8)]
    assert all(o.status == 200 and not o.broken for o in after), after

    everything = outcomes + after
    ids = {o.request_id for o in everything if o.request_id}
    assert len(ids) == len(everything), "every answer carries its own request id"
    by_id = wait_shipped(cluster.db, ids)
    assert all(len(rows) == 1 for rows in by_id.values()), "a request id recorded twice"
    ok = [o for o in everything if o.status == 200 and not o.broken]
    for o in ok:
        [row] = by_id[o.request_id]  # type: ignore[index]
        assert row["status"] == "ok" and row["completion_tokens"] > 0
    for o in everything:
        if o.status == 503 or o.broken:
            [row] = by_id[o.request_id]  # type: ignore[index]
            assert row["status"] == "error" and row["http_status"] == 503
    assert len(ok) >= 40, [o for o in everything if o not in ok]
    # The kill landed mid-traffic: some request broke, was refused, or was retried elsewhere.
    broken = sum(o.broken for o in everything)
    refused = sum(o.status == 503 for o in everything)
    retried = sum(gw.log().count("retrying elsewhere") for gw in cluster.gateways)
    print(f"ok {len(ok)}, broken streams {broken}, 503s {refused}, retried elsewhere {retried}")
    assert broken + refused + retried > 0
    survivor = cluster.replicas[1]
    for o in after:
        assert by_id[o.request_id][0]["engine"] == survivor  # type: ignore[index]


def test_rate_limit_is_shared_by_both_gateways(cluster: Cluster) -> None:
    rpm = 12
    key = create_key(cluster.db, "scale-limited", "--rpm", str(rpm))
    clients = [openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0,
                             timeout=120) for gw in cluster.gateways]  # fmt: skip
    # All of it inside one clock minute (the limiter's window), well clear of its edges.
    while not 2 <= time.time() % 60 <= 30:
        time.sleep(0.5)

    def call(i: int) -> int:
        try:
            clients[i % 2].completions.create(model=cluster.base, prompt="Hi", max_tokens=1)
            return 200
        except openai.RateLimitError as e:
            assert e.response.headers.get("retry-after"), e
            assert isinstance(e.body, dict) and e.body.get("message"), e.body
            return 429

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(call, range(3 * rpm)))
    admitted = codes.count(200)
    assert codes.count(429) == len(codes) - admitted
    # Exactly the budget across both gateways, less at most one unused slice per gateway
    # (slice = ceil(rpm / 16) = 1): see gateway/ratelimit.py.
    assert rpm - 2 <= admitted <= rpm, codes
    # Refused requests are recorded too (429): wait for all of them, then compare.
    key_id = asyncio.run(_key_id(cluster.db, "scale-limited"))
    deadline = time.monotonic() + 30
    while len(rows := asyncio.run(usage_rows(cluster.db, key_id))) < len(codes):
        assert time.monotonic() < deadline, rows
        time.sleep(0.3)
    assert sorted(r["http_status"] for r in rows) == sorted(codes)


async def _key_id(db: str, account: str) -> int:
    conn = await asyncpg.connect(db)
    try:
        return int(await conn.fetchval(
            "SELECT k.id FROM api_keys k JOIN accounts a ON a.id = k.account_id "
            "WHERE a.name = $1", account))  # fmt: skip
    finally:
        await conn.close()
