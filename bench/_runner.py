"""The rounds of one benchmark scenario: at each concurrency level, every target in turn, for
`rounds` rounds (alternating targets, so slow drift of the machine hits all alike), then the
statistics per target and the gateway's overhead over the direct engine; optionally a py-spy
profile of the gateway in one extra, unmeasured round.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from _loadgen import (
    Endpoint,
    RoundResult,
    Scenario,
    ScenarioResult,
    aggregate,
    overhead,
    pct,
    run_round,
    wait_quiet,
)
from _report import console, summarise_profile
from _stack import VENV_BIN, Stack, http_get


class Runner:
    def __init__(self, *, duration_s: float, warmup_s: float, rounds: int,
                 profile: bool, results_dir: Path, stamp: str, stack: Stack) -> None:  # fmt: skip
        self.stack = stack
        self.duration_s = duration_s
        self.warmup_s = warmup_s
        self.rounds = rounds
        self.profile = profile
        self.results_dir = results_dir
        self.stamp = stamp
        self.gateway_completed = 0
        self.fake_port: int | None = None
        self.wait_quiet_s = 0.0

    async def fake_stats(self) -> dict[str, int] | None:
        if self.fake_port is None:
            return None
        try:
            _, body = await http_get("127.0.0.1", self.fake_port, "/fake/stats")
            return json.loads(body)  # type: ignore[no-any-return]
        except (TimeoutError, OSError, ValueError):
            return None

    async def run(self, sc: Scenario, eps: dict[str, Endpoint]) -> ScenarioResult:
        out = ScenarioResult(sc)
        console.rule(f"[bold]{sc.title}")
        for level in sc.levels:
            targets = [t for t in sc.targets
                       if t != "litellm" or level in sc.litellm_levels]  # fmt: skip
            per: dict[str, list[RoundResult]] = {t: [] for t in targets}
            for r in range(self.rounds):
                for t in targets:
                    if self.wait_quiet_s > 0:
                        other = await wait_quiet(
                            [p.pid for p in self.stack.procs], self.wait_quiet_s, 15.0
                        )
                        if other >= 15.0:
                            console.print(
                                f"  [yellow]machine still busy ({other:.0f}% of a core used by "
                                "other processes); measuring anyway[/]"
                            )
                    before = await self.fake_stats()
                    rr = await run_round(
                        eps[t],
                        level,
                        self.duration_s,
                        self.warmup_s,
                        stream=sc.stream,
                        own_pids=[p.pid for p in self.stack.procs],
                    )
                    after = await self.fake_stats()
                    if before and after:
                        rr.backend_conns = after["connections"] - before["connections"] - 1
                        rr.backend_reqs = after["requests"] - before["requests"]
                    per[t].append(rr)
                    if t == "gateway":
                        self.gateway_completed += rr.completed_total
                    p50 = pct(rr.latencies_ms, 50)
                    console.print(
                        f"  c={level:<3} round {r + 1}/{self.rounds} {t:<8} "
                        f"{len(rr.latencies_ms) / rr.window_s:9.1f} req/s  "
                        f"p50 {p50 if p50 is not None else float('nan'):8.2f} ms  "
                        f"errors {rr.errors}"
                        + (f"  [red]{rr.error_samples[0]}[/]" if rr.error_samples else "")
                    )
            out.stats[level] = {t: aggregate(rs) for t, rs in per.items()}
            if "direct" in out.stats[level] and "gateway" in out.stats[level]:
                out.overheads[level] = overhead(out.stats[level]["direct"],
                                                out.stats[level]["gateway"])  # fmt: skip
        if self.profile and sc.profile_level and "gateway" in eps:
            out.profile = await self.profile_gateway(sc, eps["gateway"])
        return out

    async def profile_gateway(self, sc: Scenario, ep: Endpoint) -> dict[str, Any] | None:
        pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(VENV_BIN))
        if pyspy is None or ep.pid is None:
            console.print("[yellow]py-spy not found: no profile[/]")
            return None
        level = sc.profile_level or 64
        raw = self.results_dir / f"profile-{self.stamp}-{sc.key.replace('/', '-')}-c{level}.txt"
        dur = max(2, int(self.duration_s + self.warmup_s))
        spy = await asyncio.create_subprocess_exec(
            pyspy, "record", "--pid", str(ep.pid), "--rate", "250", "--duration", str(dur),
            "--format", "raw", "--output", str(raw), "--gil",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        console.print(f"  profiling the gateway with py-spy ({dur}s at c={level}, not counted)")
        await asyncio.sleep(0.5)
        rr = await run_round(ep, level, dur, 0.0, stream=sc.stream)
        self.gateway_completed += rr.completed_total
        try:
            _, err = await asyncio.wait_for(spy.communicate(), 30)
        except TimeoutError:
            spy.kill()
            _, err = await spy.communicate()
        if spy.returncode != 0 or not raw.is_file():
            console.print(f"[yellow]py-spy failed: {err.decode(errors='replace')[-500:]}[/]")
            return None
        return summarise_profile(raw)
