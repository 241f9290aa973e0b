"""Gateway CPU per request, by configuration, in one run (`gateway_overhead.py --cpu-profile`).

Wall-clock req/s is noise on a shared machine; the CPU time the gateway process spends per
request is not (much). This starts one gateway per configuration (each with its own fresh
database, all against the same fast fake vLLM), drives the same closed-loop load at each in
alternating rounds, and reports per configuration:

- gateway CPU µs per request: user + system time of the gateway process itself (all its
  threads: event loop, fsync thread), over the round, divided by the responses completed;
- child CPU µs per request: its children (the ledger posting worker `royalty up` starts);
- idle CPU: what the process and its children burn per second with no traffic;
- the top functions of a cProfile of the event loop thread during one extra round per
  scenario (bench/_profiled_gateway.py; profiling inflates the times, and a coroutine's
  "calls" count its resumptions: compare them with each other; inclusive times of code that
  goes through SQLAlchemy's async engine are wrong, its greenlet switches confuse cProfile).

    .venv/bin/python bench/gateway_overhead.py --cpu-profile --concurrency 16 --rounds 3


Every gateway holds up to 20 Postgres connections (pool 10 + overflow 10) and its ledger
worker a few more: against a server with max_connections = 100 (shared with others' tests)
run at most 6 gateways at once (`--cpu-config`, x2 with `--cpu-base`); the default runs 6.

Configurations (environment of `royalty up`):
  default           shared rate limits (Postgres), budgets, ledger worker: as shipped; the
                    model has no price, so the budget gate reserves nothing
  priced            default, with a price on the model and credit on the key's account: the
                    budget gate reserves before and settles after every request
  no-shared-limits  ROYALTY_SHARED_LIMITS=0 (per-process token buckets)
  no-budgets        ROYALTY_BUDGETS=0
  no-ledger-worker  ROYALTY_POST_USAGE=0
  minimal           all three off
"""

from __future__ import annotations

import asyncio
import json
import os
import pstats
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _loadgen import Endpoint, chat_body, pct, run_round
from _report import console, md_table, rich_table
from _stack import BENCH, ROOT, Layout, Proc, Stack, free_port, http_post, wait_http

CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "priced": {},
    "no-shared-limits": {"ROYALTY_SHARED_LIMITS": "0"},
    "no-budgets": {"ROYALTY_BUDGETS": "0"},
    "no-ledger-worker": {"ROYALTY_POST_USAGE": "0"},
    "minimal": {"ROYALTY_SHARED_LIMITS": "0", "ROYALTY_BUDGETS": "0", "ROYALTY_POST_USAGE": "0"},
}
MODEL = "royalty-tiny"
PROJECT_DIRS = ("gateway/", "metering/", "serving/", "attribution/")


@dataclass
class Target:
    name: str
    proc: Proc
    port: int
    key: str
    db_url: str
    stats_file: Path
    cpu_self_s: dict[str, float] = field(default_factory=dict)
    cpu_child_s: dict[str, float] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    idle_pct: tuple[float, float] | None = None
    config: str = ""
    profile: dict[str, dict[str, Any]] = field(default_factory=dict)
    paced: dict[str, Any] = field(default_factory=dict)
    """Latencies, tokens and CPU of the paced-streams phase."""


def _cpu(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, its descendants' CPU seconds)."""
    p = psutil.Process(pid)
    t = p.cpu_times()
    own = t.user + t.system
    kids = 0.0
    for c in p.children(recursive=True):
        try:
            ct = c.cpu_times()
        except psutil.Error:
            continue
        kids += ct.user + ct.system
    return own, kids


async def _royalty(env: dict[str, str], *args: str) -> str:
    # Through the same dispatcher as the gateway: a --cpu-base tree runs its own CLI.
    p = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH / "_profiled_gateway.py"), "-", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(p.communicate(), 120)
    if p.returncode != 0:
        raise RuntimeError(f"royalty {' '.join(args)} failed:\n{err.decode()[-2000:]}")
    return out.decode().strip().splitlines()[-1].strip()


async def _fresh_database(base_url: str, name: str) -> str:
    import asyncpg

    root = base_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(root + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{root}/{name}"


async def _drop_database(base_url: str, name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(base_url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def start_target(stack: Stack, config: str, fport: int, models: Path, base_db: str,
                       source: Path | None = None, tag: str = "") -> Target:  # fmt: skip
    """A gateway of `config`, from this checkout or (`source`, named `config@tag`) from the
    source tree of another revision, run by the same interpreter and packages."""
    name = f"{config}@{tag}" if source is not None else config
    slug = "".join(c if c.isalnum() else "_" for c in name).lower()
    db = await _fresh_database(base_db, f"royalty_bench_cpu_{slug}")
    port = free_port()
    data_dir = stack.work / f"gw-{slug}"
    stats_file = stack.work / f"cprofile-{slug}.pstats"
    env = dict(os.environ)
    env.pop("ROYALTY_ENGINE_URLS", None)
    env["ROYALTY_TRAINING_WORKER"] = "0"  # no torch child next to the measured gateway
    env.update(CONFIGS[config])
    if source is not None:  # its packages shadow this checkout's (editable install)
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(":")
    proc = stack.start(
        f"gateway-{slug}",
        [sys.executable, str(BENCH / "_profiled_gateway.py"), str(stats_file), "up",
         "--engine-url", f"http://127.0.0.1:{fport}", "--models-dir", str(models),
         "--database-url", db, "--data-dir", str(data_dir), "--host", "127.0.0.1",
         "--port", str(port), "--no-demo-key"],
        cpus=stack.layout.gateway_cpus, env=env,
    )  # fmt: skip
    await wait_http(proc, port, "/healthz", 180)
    common = ["--database-url", db, "--data-dir", str(data_dir)]
    key = await _royalty(env, "keys", "create", "--account", "bench", "--rpm", "100000000",
                         "--tpm", "1000000000", *common)  # fmt: skip
    if config == "priced":
        await _royalty(env, "prices", "set", "--base-model", MODEL, "--input", "0.5",
                       "--output", "1.5", *common)  # fmt: skip
        await _royalty(env, "credits", "add", "--account", "bench", "--amount", "1000000000",
                       *common)  # fmt: skip
    return Target(name, proc, port, key, db, stats_file, config=config)


def export_revision(rev: str, dest: Path) -> str:
    """The source tree of `rev` (git archive: the checkout and its .git are not touched);
    returns its short hash."""
    short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return short


def _endpoint(t: Target, stream: bool, tokens: int) -> Endpoint:
    return Endpoint(t.name, "127.0.0.1", t.port, "/v1/chat/completions",
                    chat_body(MODEL, tokens, stream), t.key, pid=t.proc.pid)  # fmt: skip


async def measure(t: Target, scenario: str, stream: bool, level: int, seconds: float,
                  tokens: int) -> int:  # fmt: skip
    pid = t.proc.pid  # the launcher runs the gateway in its own process: this is it
    own0, kids0 = _cpu(pid)
    rr = await run_round(_endpoint(t, stream, tokens), level, seconds, 0.0, stream=stream)
    own1, kids1 = _cpu(pid)
    if rr.errors:
        console.print(f"  [red]{t.name}: {rr.errors} errors: {rr.error_samples[:1]}[/]")
    t.cpu_self_s[scenario] = t.cpu_self_s.get(scenario, 0.0) + own1 - own0
    t.cpu_child_s[scenario] = t.cpu_child_s.get(scenario, 0.0) + kids1 - kids0
    t.done[scenario] = t.done.get(scenario, 0) + rr.completed_total
    return rr.completed_total


async def paced_phase(targets: list[Target], direct: Endpoint, fport: int, rounds: int,
                      level: int, seconds: float, tokens: int, delay_ms: float) -> None:  # fmt: skip
    """`level` streams paced at `delay_ms` per token, direct and through each gateway in
    alternating rounds: the latency the gateway adds (the README's 64-stream scenario)."""
    await http_post("127.0.0.1", fport, "/fake/config",
                    json.dumps({"token_delay_ms": delay_ms}).encode())  # fmt: skip
    try:
        names = ["direct", *(t.name for t in targets)]
        acc: dict[str, dict[str, Any]] = {
            n: {"lat": [], "ttft": [], "tokens": 0, "window": 0.0, "cpu": 0.0, "done": 0}
            for n in names
        }
        for r in range(rounds):
            order = [None, *targets] if r % 2 == 0 else [*reversed(targets), None]
            for t in order:
                ep = direct if t is None else _endpoint(t, True, tokens)
                own0 = _cpu(t.proc.pid)[0] if t is not None else 0.0
                rr = await run_round(ep, level, seconds, 1.0, stream=True)
                a = acc["direct" if t is None else t.name]
                if t is not None:
                    a["cpu"] += _cpu(t.proc.pid)[0] - own0
                a["lat"] += rr.latencies_ms
                a["ttft"] += rr.ttft_ms
                a["tokens"] += rr.tokens
                a["window"] += rr.window_s
                a["done"] += rr.completed_total
                console.print(f"  paced round {r + 1}/{rounds} {ep.name:<17} "
                              f"p50 {pct(rr.latencies_ms, 50) or 0:7.1f} ms  "
                              f"p99 {pct(rr.latencies_ms, 99) or 0:7.1f} ms")  # fmt: skip
        d = acc["direct"]
        for t in targets:
            a = acc[t.name]
            t.paced = {
                "p50_ms": pct(a["lat"], 50), "p99_ms": pct(a["lat"], 99),
                "ttft_p50_ms": pct(a["ttft"], 50), "ttft_p99_ms": pct(a["ttft"], 99),
                "d_p50_ms": (pct(a["lat"], 50) or 0) - (pct(d["lat"], 50) or 0),
                "d_p99_ms": (pct(a["lat"], 99) or 0) - (pct(d["lat"], 99) or 0),
                "tokens_ratio": (a["tokens"] / a["window"]) / (d["tokens"] / d["window"])
                if d["tokens"] and a["window"] and d["window"] else None,
                "cpu_us_per_req": a["cpu"] * 1e6 / max(a["done"], 1),
                "direct_p50_ms": pct(d["lat"], 50), "direct_p99_ms": pct(d["lat"], 99),
            }  # fmt: skip
    finally:
        await http_post("127.0.0.1", fport, "/fake/config",
                        json.dumps({"token_delay_ms": 0}).encode())  # fmt: skip


async def idle_cpu(t: Target, seconds: float = 3.0) -> tuple[float, float]:
    own0, kids0 = _cpu(t.proc.pid)
    w0 = time.perf_counter()
    await asyncio.sleep(seconds)
    own1, kids1 = _cpu(t.proc.pid)
    w = time.perf_counter() - w0
    return 100.0 * (own1 - own0) / w, 100.0 * (kids1 - kids0) / w


async def cprofile(t: Target, scenario: str, stream: bool, level: int, seconds: float,
                   tokens: int, top: int) -> None:  # fmt: skip
    t.stats_file.unlink(missing_ok=True)
    os.kill(t.proc.pid, signal.SIGUSR1)
    await asyncio.sleep(0.2)
    rr = await run_round(_endpoint(t, stream, tokens), level, seconds, 0.0, stream=stream)
    os.kill(t.proc.pid, signal.SIGUSR2)
    for _ in range(100):
        if t.stats_file.is_file() and t.stats_file.stat().st_size > 0:
            break
        await asyncio.sleep(0.1)
    else:
        console.print(f"[yellow]{t.name}: no cProfile statistics written[/]")
        return
    await asyncio.sleep(0.3)  # let the dump finish
    t.profile[scenario] = summarise(t.stats_file, rr.completed_total, top)


def _where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    for marker in ("base-src/", f"{ROOT}/", "site-packages/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path}:{line})" if path != "~" else name


def summarise(stats_file: Path, requests: int, top: int) -> dict[str, Any]:
    """Top functions by own time, and project functions by inclusive time, in µs/request."""
    st = pstats.Stats(str(stats_file))
    rows = st.stats  # type: ignore[attr-defined]
    n = max(requests, 1)
    own = sorted(rows.items(), key=lambda kv: -kv[1][2])[:top]
    proj = [kv for kv in rows.items() if any(d in kv[0][0] for d in PROJECT_DIRS)]
    incl = sorted(proj, key=lambda kv: -kv[1][3])[:top]
    total = sum(v[2] for v in rows.values())
    return {
        "requests": requests,
        "profiled_us_per_req": total * 1e6 / n,
        "self": [{"function": _where(f), "us_per_req": v[2] * 1e6 / n, "calls_per_req": v[1] / n}
                 for f, v in own],
        "inclusive": [{"function": _where(f), "us_per_req": v[3] * 1e6 / n,
                       "calls_per_req": v[1] / n} for f, v in incl],
    }  # fmt: skip


async def run_cpu_profile(
    *, layout: Layout, work: Path, db_url: str, configs: list[str], rounds: int,
    seconds: float, level: int, tokens: int, top: int, out: Path, stamp: str,
    meta: dict[str, Any], base_rev: str | None = None, paced_level: int = 64,
    paced_ms: float = 10.0,
) -> int:  # fmt: skip
    stack = Stack(work, layout, db_url)
    targets: list[Target] = []
    scenarios = [("non-streaming", False), ("streaming", True)]
    try:
        fake, fport = await stack.fake_backend(tokens)
        models = work / "fake-models"
        (models / "base").mkdir(parents=True)
        (models / "manifest.json").write_text(json.dumps({"base": {"name": MODEL, "path": "base"},
                                                         "adapters": {}}))  # fmt: skip
        base: tuple[Path, str] | None = None
        if base_rev:
            src = work / "base-src"
            base = (src, export_revision(base_rev, src))
            meta["describe"] += f"; `@{base[1]}`: the same configuration at git {base[1]}"
        for name in configs:
            console.print(f"starting gateway [bold]{name}[/] {CONFIGS[name] or ''}")
            targets.append(await start_target(stack, name, fport, models, db_url))
            if base is not None:
                console.print(f"starting gateway [bold]{name}@{base[1]}[/]")
                targets.append(await start_target(stack, name, fport, models, db_url, *base))
        console.print(f"warming up ({len(targets)} gateways)")
        for t in targets:
            await run_round(_endpoint(t, False, tokens), level, 1.0, 0.0, stream=False)
        for t in targets:
            t.idle_pct = await idle_cpu(t)
        for r in range(rounds):
            for scenario, stream in scenarios:
                order = targets if r % 2 == 0 else list(reversed(targets))
                for t in order:
                    n = await measure(t, scenario, stream, level, seconds, tokens)
                    console.print(f"  round {r + 1}/{rounds} {scenario:<13} {t.name:<17} "
                                  f"{n / seconds:8.0f} req/s")  # fmt: skip
        if paced_level:
            direct = Endpoint("direct", "127.0.0.1", fport, "/v1/chat/completions",
                              chat_body(MODEL, tokens, True), pid=fake.pid)  # fmt: skip
            await paced_phase(targets, direct, fport, rounds, paced_level, seconds, tokens,
                              paced_ms)  # fmt: skip
        if top:
            for t in targets:
                for scenario, stream in scenarios:
                    console.print(f"  cProfile: {t.name}, {scenario}")
                    await cprofile(t, scenario, stream, level, seconds, tokens, top)
    finally:
        stack.stop_all()
        for t in targets:
            await _drop_database(db_url, t.db_url.rsplit("/", 1)[1])
    report(targets, [s for s, _ in scenarios], level, out, stamp, meta, paced_level, paced_ms)
    return 0


def report(targets: list[Target], scenarios: list[str], level: int, out: Path, stamp: str,
           meta: dict[str, Any], paced_level: int = 0, paced_ms: float = 0.0) -> None:  # fmt: skip
    cols = ["configuration"]
    for s in scenarios:
        cols += [f"{s}: gateway CPU µs/req", f"{s}: worker CPU µs/req", f"{s}: requests"]
    cols += ["idle CPU % (gateway / worker)"]
    rows = []
    doc: dict[str, Any] = {"meta": meta, "concurrency": level, "configs": {}}
    for t in targets:
        row = [t.name]
        d: dict[str, Any] = {"env": CONFIGS[t.config], "idle_pct": t.idle_pct,
                             "profile": t.profile, "paced": t.paced}  # fmt: skip
        for s in scenarios:
            n = max(t.done.get(s, 0), 1)
            own = t.cpu_self_s.get(s, 0.0) * 1e6 / n
            kid = t.cpu_child_s.get(s, 0.0) * 1e6 / n
            row += [f"{own:.0f}", f"{kid:.0f}", str(t.done.get(s, 0))]
            d[s] = {"gateway_cpu_us_per_req": own, "worker_cpu_us_per_req": kid,
                    "requests": t.done.get(s, 0)}  # fmt: skip
        row.append("–" if t.idle_pct is None else f"{t.idle_pct[0]:.1f} / {t.idle_pct[1]:.1f}")
        rows.append(row)
        doc["configs"][t.name] = d
    title = f"Gateway CPU per request by configuration (c={level}, chat, fake backend)"
    console.print(rich_table(title, cols, rows))
    parts = [f"# {title}", "", f"- {meta.get('describe', '')}", "", md_table(cols, rows)]
    paced = [t for t in targets if t.paced]
    if paced:
        ptitle = (f"{paced_level} streams paced at {paced_ms:g} ms/token, gateway − direct "
                  f"(direct p50 {paced[0].paced['direct_p50_ms']:.1f} ms, p99 "
                  f"{paced[0].paced['direct_p99_ms']:.1f} ms)")  # fmt: skip
        pcols = ["configuration", "Δp50 ms", "Δp99 ms", "TTFT p50 ms", "TTFT p99 ms",
                 "tokens/s gateway ÷ direct", "gateway CPU µs/req"]  # fmt: skip
        prows = [[t.name, f"{t.paced['d_p50_ms']:+.2f}", f"{t.paced['d_p99_ms']:+.2f}",
                  f"{t.paced['ttft_p50_ms'] or 0:.2f}", f"{t.paced['ttft_p99_ms'] or 0:.2f}",
                  f"{t.paced['tokens_ratio'] or 0:.3f}", f"{t.paced['cpu_us_per_req']:.0f}"]
                 for t in paced]  # fmt: skip
        console.print(rich_table(ptitle, pcols, prows))
        parts += ["", f"## {ptitle}", "", md_table(pcols, prows)]
    for t in targets:
        for scenario, p in t.profile.items():
            head = (f"cProfile of `{t.name}`, {scenario}, {p['requests']} requests "
                    f"({p['profiled_us_per_req']:.0f} µs/req profiled)")  # fmt: skip
            self_rows = [[f["function"], f"{f['us_per_req']:.1f}", f"{f['calls_per_req']:.2f}"]
                         for f in p["self"]]  # fmt: skip
            incl_rows = [[f["function"], f"{f['us_per_req']:.1f}", f"{f['calls_per_req']:.2f}"]
                         for f in p["inclusive"]]  # fmt: skip
            fcols = ["function", "µs/req", "calls/req"]
            console.print(rich_table(f"{head}: own time", fcols, self_rows))
            console.print(rich_table(f"{head}: project functions, inclusive", fcols, incl_rows))
            parts += ["", f"## {head}", "", md_table(["own time", "µs/req", "calls/req"],
                      self_rows), "", md_table(["inclusive (project)", "µs/req", "calls/req"],
                      incl_rows)]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gateway_cpu-{stamp}.json").write_text(json.dumps(doc, indent=2))
    md = out / f"gateway_cpu-{stamp}.md"
    md.write_text("\n".join(parts) + "\n")
    console.print(f"wrote {md}")
