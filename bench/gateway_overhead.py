"""Gateway overhead benchmark: the same load, direct to the engine and through the gateway,
in alternating rounds of one run.

Backends:
  fake   bench/fake_vllm.py (a fast fake vLLM), so the gateway's own cost is what shows;
  vllm   a real vLLM CPU server started from --models-dir (skipped without one).
LiteLLM's proxy (one worker, from bench/.venv-litellm) runs in front of the same fake backend
when it is installed, for the requests/s-per-core comparison.

Processes are pinned (unless --no-pin): the gateway (and LiteLLM) on --gateway-cpus, the
backend and this load generator on --client-cpus. Durable usage capture (fsync'd local log,
shipped to Postgres) is on, as in production.

    .venv/bin/python bench/gateway_overhead.py --quick
    .venv/bin/python bench/gateway_overhead.py --models-dir .royalty/models/<hash>

Results: a rich table on the console, and JSON + markdown in bench/results/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from _loadgen import Endpoint, Scenario, ScenarioResult, chat_body, completion_body
from _report import console, fsync_latency, machine_info, report
from _runner import Runner
from _stack import (
    BENCH,
    LITELLM_BIN,
    LITELLM_KEY,
    Layout,
    Stack,
    count_usage,
    ensure_database,
    http_post,
    litellm_version,
)
from gateway_cpu import CONFIGS, run_cpu_profile

# This module is the command line and the run: which stack, which scenarios. Beside it:
# _loadgen (the load generator, a round's measurements, statistics, scenarios), _stack (the
# processes under test), _runner (the rounds of one scenario), _report (console tables, results
# files, py-spy summary), gateway_cpu (--cpu-profile). Imports go one way: this module and
# gateway_cpu use the underscore modules, which never import either.
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/royalty_bench"


# =============================================================================================
# Main
# =============================================================================================


def _levels(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


async def amain(o: Options) -> int:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    ncpu = len(os.sched_getaffinity(0))
    pin = o.pin and ncpu >= 2
    layout = Layout(pin, set(_levels(o.gateway_cpus)), set(_levels(o.client_cpus)))
    if pin:
        os.sched_setaffinity(0, layout.client_cpus)  # this process is the load generator
    if o.cpu_profile:
        return await cpu_profile_main(o, layout, stamp)
    meta: dict[str, Any] = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "layout": layout.describe(),
        "rounds": o.rounds,
        "duration_s": o.duration,
        "warmup_s": o.warmup,
        "quick": o.quick,
        "fake_tokens": o.tokens,
        "fake_token_delay_ms": o.token_delay_ms,
        "vllm_tokens": o.vllm_tokens,
    }
    m = meta["machine"]
    console.print(f"[bold]Machine:[/] {m['cpu_model']}, {m['logical_cpus']} logical CPUs; "
                  f"[bold]pinning:[/] {layout.describe()}")  # fmt: skip
    await ensure_database(o.database_url)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH / ".work"))
    console.print(f"work dir (data dirs, logs): {work}")
    stack = Stack(work, layout, o.database_url)
    runner = Runner(duration_s=o.duration, warmup_s=o.warmup, rounds=o.rounds,
                    profile=o.profile, results_dir=o.out, stamp=stamp, stack=stack)  # fmt: skip
    runner.wait_quiet_s = o.wait_quiet
    stack.usage_log_dir = o.usage_log_dir / f"royalty-bench-{stamp}" if o.usage_log_dir else None
    log_fs = o.usage_log_dir or work
    meta["usage_log_dir"] = str(o.usage_log_dir) if o.usage_log_dir else "the gateway data dir"
    meta["fdatasync"] = fsync_latency(log_fs)
    console.print(
        f"fdatasync of a 300-byte append where the usage log lives ({log_fs}): "
        f"p50 {meta['fdatasync']['p50_ms']:.2f} ms, p99 {meta['fdatasync']['p99_ms']:.2f} ms"
    )
    results: list[ScenarioResult] = []
    usage_notes: list[str] = []
    use_litellm = o.litellm and LITELLM_BIN.exists()
    if o.litellm and not use_litellm:
        console.print(
            f"[yellow]LiteLLM not installed at {LITELLM_BIN}: skipping that comparison[/]"
        )
    levels = _levels(o.concurrency)
    lite_levels = _levels(o.litellm_concurrency)
    ok = True
    try:
        if "fake" in o.backends:
            model = "royalty-tiny"
            fake, fport = await stack.fake_backend(o.tokens)
            mdir = work / "fake-models"
            (mdir / "base").mkdir(parents=True)
            (mdir / "adapters" / "recipes").mkdir(parents=True)
            (mdir / "manifest.json").write_text(json.dumps(
                {"base": {"name": model, "path": "base"},
                 "adapters": {"recipes": {"path": "adapters/recipes"}}}))  # fmt: skip
            before = await count_usage(o.database_url)
            gw, gport, key = await stack.gateway(fport, mdir, "fake")
            lite = None
            if use_litellm:
                try:
                    lite, lport = await stack.litellm(fport, model)
                    meta["litellm"] = (f"litellm {litellm_version()} proxy, --num_workers 1, "
                                       "no database, master key auth only")  # fmt: skip
                except RuntimeError as e:
                    console.print(f"[red]LiteLLM did not start:[/] {e}")

            async def set_delay(ms: float) -> None:
                await http_post("127.0.0.1", fport, "/fake/config",
                                json.dumps({"token_delay_ms": ms}).encode())  # fmt: skip

            def eps(stream: bool) -> dict[str, Endpoint]:
                body = chat_body(model, o.tokens, stream)
                path = "/v1/chat/completions"
                d = {
                    "direct": Endpoint("direct", "127.0.0.1", fport, path, body, pid=fake.pid),
                    "gateway": Endpoint("gateway", "127.0.0.1", gport, path, body, key,
                                        pid=gw.pid),
                }  # fmt: skip
                if lite is not None:
                    d["litellm"] = Endpoint("litellm", "127.0.0.1", lport, path, body,
                                            LITELLM_KEY, pid=lite.pid)  # fmt: skip
                return d

            scenarios = [
                (Scenario("fake/stream-paced",
                          f"fake backend, streaming chat, {o.tokens} tokens at "
                          f"{o.token_delay_ms:g} ms/token",
                          True, levels, ["direct", "gateway"], o.token_delay_ms),
                 o.token_delay_ms),
                (Scenario("fake/stream-max",
                          f"fake backend, streaming chat, {o.tokens} tokens, no delay "
                          "(saturation)",
                          True, levels, ["direct", "gateway"], 0.0,
                          profile_level=max(levels)),
                 0.0),
                (Scenario("fake/nonstream-max",
                          f"fake backend, non-streaming chat, {o.tokens} tokens, no delay "
                          "(saturation)",
                          False, levels,
                          ["direct", "gateway"] + (["litellm"] if lite is not None else []),
                          0.0, litellm_levels=lite_levels, profile_level=max(levels)),
                 0.0),
            ]  # fmt: skip
            runner.fake_port = fport
            for sc, delay in scenarios:
                if o.only and sc.key not in o.only:
                    continue
                await set_delay(delay)
                results.append(await runner.run(sc, eps(sc.stream)))
            runner.fake_port = None
            if lite is not None:
                stack.stop(lite)
            sent = runner.gateway_completed
            rc = stack.stop(gw)
            await asyncio.sleep(0.5)
            after = await count_usage(o.database_url)
            if before is not None and after is not None:
                note = (f"fake gateway: {sent} completed responses, {after - before} usage_events "
                        f"rows shipped to Postgres (gateway exit code {rc})")  # fmt: skip
            else:
                note = f"fake gateway: {sent} completed responses; usage_events not readable"
            usage_notes.append(note)
            console.print(note)
            stack.stop(fake)

        if "vllm" in o.backends:
            if o.models_dir is None:
                console.print("[yellow]vllm mode skipped: pass --models-dir (a model tree with "
                              "manifest.json, e.g. .royalty/models/<hash>)[/]")  # fmt: skip
            else:
                manifest = json.loads((o.models_dir / "manifest.json").read_text())
                model = manifest["base"]["name"]
                mpath = (o.models_dir / manifest["base"]["path"]).resolve()
                console.rule("[bold]starting vLLM")
                vp, vport = await stack.vllm_backend(mpath, model)
                before = await count_usage(o.database_url)
                runner.gateway_completed = 0
                gw, gport, key = await stack.gateway(vport, o.models_dir.resolve(), "vllm")
                chat = o.vllm_endpoint == "chat"
                path = "/v1/chat/completions" if chat else "/v1/completions"
                body = (
                    chat_body(model, o.vllm_tokens, True)
                    if chat
                    else completion_body(model, o.vllm_tokens, True, o.vllm_prompt)
                )
                sc = Scenario("vllm/stream",
                              f"real vLLM CPU engine, streaming {'chat' if chat else 'completions'}"
                              f", max_tokens {o.vllm_tokens}, temperature 0",
                              True, levels, ["direct", "gateway"])  # fmt: skip
                if not o.only or sc.key in o.only:
                    results.append(await runner.run(sc, {
                        "direct": Endpoint("direct", "127.0.0.1", vport, path, body, pid=vp.pid),
                        "gateway": Endpoint("gateway", "127.0.0.1", gport, path, body, key,
                                            pid=gw.pid),
                    }))  # fmt: skip
                sent = runner.gateway_completed
                rc = stack.stop(gw)
                await asyncio.sleep(0.5)
                after = await count_usage(o.database_url)
                if before is not None and after is not None:
                    note = (f"vLLM gateway: {sent} completed responses, {after - before} "
                            f"usage_events rows shipped (gateway exit code {rc})")  # fmt: skip
                    usage_notes.append(note)
                    console.print(note)
                stack.stop(vp)
    except Exception:
        ok = False
        console.print_exception(max_frames=8)
        for p in stack.procs:
            console.print(f"[red]--- {p.name} log tail ({p.log_path})[/]\n{p.tail(20)}")
    finally:
        stack.stop_all()
    meta["usage_check"] = "; ".join(usage_notes) or "n/a"
    if results:
        js, md = report(results, meta, o.out, stamp)
        console.print(f"\nwrote {js}\n      {md}")
    if ok and not o.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
        if stack.usage_log_dir is not None:
            shutil.rmtree(stack.usage_log_dir, ignore_errors=True)
    return 0 if ok else 1


async def cpu_profile_main(o: Options, layout: Layout, stamp: str) -> int:
    # Default: all configurations, or the three that bracket the costs when each runs twice
    # (--cpu-base), so that no more than 6 gateways share the database's connections.
    configs = o.cpu_configs or (["default", "priced", "minimal"] if o.cpu_base else list(CONFIGS))
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        console.print(f"[red]unknown configurations {unknown}; choose from {list(CONFIGS)}[/]")
        return 2
    await ensure_database(o.database_url)
    m = machine_info()
    load = os.getloadavg()
    describe = (f"{m['cpu_model']}, {m['logical_cpus']} CPUs, git {m['git_rev']}; "
                f"{layout.describe()}; load average at start {load[0]:.2f} {load[1]:.2f} "
                f"{load[2]:.2f}; {o.rounds} rounds x {o.duration:g} s per configuration and "
                "scenario, alternating")  # fmt: skip
    console.print(describe)
    work = Path(tempfile.mkdtemp(prefix="cpu-", dir=BENCH / ".work"))
    level = max(_levels(o.concurrency))
    rc = await run_cpu_profile(
        layout=layout, work=work, db_url=o.database_url, configs=configs, rounds=o.rounds,
        seconds=o.duration, level=level, tokens=o.tokens, top=o.cpu_top, out=o.out,
        stamp=stamp, meta={"machine": m, "describe": describe}, base_rev=o.cpu_base,
        paced_level=o.cpu_paced, paced_ms=o.token_delay_ms,
    )  # fmt: skip
    if not o.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    return rc


@dataclass
class Options:
    quick: bool
    backends: list[str]
    models_dir: Path | None
    database_url: str
    concurrency: str
    litellm_concurrency: str
    duration: float
    warmup: float
    rounds: int
    tokens: int
    token_delay_ms: float
    vllm_tokens: int
    vllm_endpoint: str
    vllm_prompt: str
    litellm: bool
    profile: bool
    pin: bool
    gateway_cpus: str
    client_cpus: str
    out: Path
    keep_workdir: bool
    only: list[str]
    usage_log_dir: Path | None
    wait_quiet: float
    cpu_profile: bool = False
    cpu_configs: list[str] = field(default_factory=list)
    cpu_top: int = 15
    cpu_base: str | None = None
    cpu_paced: int = 64


app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
def main(
    quick: Annotated[bool, typer.Option(help="Short smoke run (seconds, not minutes).")] = False,
    backend: Annotated[
        list[str] | None, typer.Option(help="fake and/or vllm (repeatable); default both.")
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Model tree with manifest.json, for the vllm backend.")
    ] = None,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="BENCH_DATABASE_URL", help="PostgreSQL for the gateway (created if missing)."
        ),
    ] = DEFAULT_DB,
    concurrency: Annotated[str, typer.Option(help="Concurrent streams per level.")] = "1,16,64",
    litellm_concurrency: Annotated[str, typer.Option(help="Levels run on LiteLLM.")] = "1,64",
    duration: Annotated[float | None, typer.Option(help="Measured seconds per round.")] = None,
    warmup: Annotated[float | None, typer.Option(help="Unmeasured seconds per round.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds per target per level.")] = None,
    tokens: Annotated[int, typer.Option(help="Completion tokens per fake request.")] = 16,
    token_delay_ms: Annotated[
        float, typer.Option(help="Fake per-token delay in the paced streaming scenario.")
    ] = 10.0,
    vllm_tokens: Annotated[int, typer.Option(help="max_tokens per vLLM request.")] = 32,
    vllm_endpoint: Annotated[str, typer.Option(help="chat or completions.")] = "completions",
    vllm_prompt: Annotated[
        str, typer.Option(help="Prompt for vLLM completions (temperature 0).")
    ] = "The planet",
    litellm: Annotated[bool, typer.Option(help="Compare with LiteLLM when installed.")] = True,
    profile: Annotated[
        bool | None,
        typer.Option(help="py-spy the gateway in an extra, unmeasured 64-stream round."),
    ] = None,
    pin: Annotated[bool, typer.Option(help="Pin processes to CPUs.")] = True,
    gateway_cpus: Annotated[str, typer.Option(help="CPUs for the gateway and LiteLLM.")] = "0",
    client_cpus: Annotated[
        str, typer.Option(help="CPUs for the backend and the load generator.")
    ] = "1",
    out: Annotated[Path, typer.Option(help="Results directory.")] = BENCH / "results",
    keep_workdir: Annotated[bool, typer.Option(help="Keep data dirs and logs.")] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Run only these scenario keys (repeatable), e.g. fake/nonstream-max."),
    ] = None,
    usage_log_dir: Annotated[
        Path | None,
        typer.Option(
            help="Put the gateway's usage log here (ROYALTY_USAGE_LOG_DIR), e.g. /dev/shm for a "
            "diagnostic run without disk fsync cost; default: the gateway's data dir."
        ),
    ] = None,
    wait_quiet: Annotated[
        float,
        typer.Option(
            help="Before each round wait up to this many seconds for other processes on the "
            "machine to use <15% of a core (shared machines)."
        ),
    ] = 0.0,
    cpu_profile: Annotated[
        bool,
        typer.Option(
            help="Instead of the overhead scenarios: gateway CPU µs per request by configuration "
            "(shared limits, budgets, ledger worker on/off) in one run, and cProfile's top "
            "functions (bench/gateway_cpu.py)."
        ),
    ] = False,
    cpu_config: Annotated[
        list[str] | None,
        typer.Option(help="--cpu-profile: only these configurations (repeatable)."),
    ] = None,
    cpu_top: Annotated[
        int, typer.Option(help="--cpu-profile: functions listed per profile (0: no cProfile).")
    ] = 15,
    cpu_base: Annotated[
        str | None,
        typer.Option(
            help="--cpu-profile: also run each configuration from this git revision's source "
            "(e.g. HEAD~3), alternating with this checkout: before/after in one run."
        ),
    ] = None,
    cpu_paced: Annotated[
        int,
        typer.Option(
            help="--cpu-profile: also this many streams paced at --token-delay-ms, direct and "
            "through each gateway: latency added (0: skip)."
        ),
    ] = 64,
) -> None:
    o = Options(
        quick=quick,
        backends=backend or ["fake", "vllm"],
        models_dir=models_dir,
        database_url=database_url,
        concurrency=concurrency if not quick or concurrency != "1,16,64" else "1,64",
        litellm_concurrency=litellm_concurrency,
        duration=duration if duration is not None else (1.0 if quick else 4.0),
        warmup=warmup if warmup is not None else (0.3 if quick else 1.0),
        rounds=rounds if rounds is not None else (1 if quick else 2),
        tokens=tokens,
        token_delay_ms=token_delay_ms,
        vllm_tokens=vllm_tokens if not quick else min(vllm_tokens, 16),
        vllm_endpoint=vllm_endpoint,
        vllm_prompt=vllm_prompt,
        litellm=litellm,
        profile=profile if profile is not None else not quick,
        pin=pin,
        gateway_cpus=gateway_cpus,
        client_cpus=client_cpus,
        out=out,
        keep_workdir=keep_workdir,
        only=only or [],
        usage_log_dir=usage_log_dir,
        wait_quiet=wait_quiet,
        cpu_profile=cpu_profile,
        cpu_configs=cpu_config or [],
        cpu_top=cpu_top,
        cpu_base=cpu_base,
        cpu_paced=cpu_paced,
    )
    (BENCH / ".work").mkdir(exist_ok=True)
    try:
        import uvloop

        rc = uvloop.run(amain(o))
    except ImportError:  # pragma: no cover
        rc = asyncio.run(amain(o))
    raise typer.Exit(rc)


if __name__ == "__main__":
    app()
