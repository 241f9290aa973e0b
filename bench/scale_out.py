"""Scale-out benchmark: 1 vs 2 engine replicas and 1 vs 2 gateway processes, and adapter-
affinity routing vs round-robin with 20 adapters and fewer LoRA slots than that.

The engines are `bench/fake_vllm.py` paced fakes, not vLLM: on a 2-core machine a real engine
would be the bottleneck of every configuration, and the point here is what the gateway's
routing and process count do. Each fake decodes at `--token-delay-ms` per token with a batch
of `--max-running` sequences (beyond it requests queue, as in vLLM), and
`load_lora_adapter` takes `--lora-load-ms`. The gateways are real `royalty up` processes
(durable usage log, shared rate limits on PostgreSQL), all configurations in one run.

    .venv/bin/python bench/scale_out.py            # ~5 minutes
    .venv/bin/python bench/scale_out.py --quick    # ~1.5 minutes

Results: a markdown table on stdout and in bench/results/scale_out-<time>.md (+ .json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import pct
from _report import machine_info, md_table
from _stack import Proc, ensure_database, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ROYALTY = str(Path(sys.executable).with_name("royalty"))
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/royalty_bench_scale"
BASE = "royalty-tiny"


@dataclass
class Result:
    name: str
    engines: int
    gateways: int
    routing: str
    concurrency: int
    window_s: float
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    adapter_loads: int = 0
    error_samples: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "config": self.name,
            "engines": self.engines,
            "gateways": self.gateways,
            "routing": self.routing,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "rps": self.requests / self.window_s,
            "tokens_per_s": self.tokens / self.window_s,
            "p50_ms": pct(self.latencies_ms, 50),
            "p99_ms": pct(self.latencies_ms, 99),
            "adapter_loads": self.adapter_loads,
            "loads_per_100_req": 100 * self.adapter_loads / self.requests
            if self.requests
            else None,
            "error_samples": self.error_samples[:3],
        }


def write_models(root: Path, adapters: list[str]) -> Path:
    """A model tree the gateway accepts (manifest only: the fake engines never read it)."""
    (root / "base").mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": 1,
        "base": {"name": BASE, "path": "base", "weights_sha256": "0" * 64},
        "adapters": {a: {"path": f"adapters/{a}", "weights_sha256": "0" * 64} for a in adapters},
        "prompts": {},
    }
    for a in adapters:
        (root / "adapters" / a).mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    # The gateway's response attribution reads the base model's tokenizer.
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(root / "base" / "tokenizer.json"))
    return root


async def wait_ready(url: str, proc: Proc, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} not ready:\n{proc.tail()}")


class Stack:
    def __init__(self, work: Path, db: str) -> None:
        self.work = work
        self.db = db
        self.procs: list[Proc] = []
        self.engine_ports: list[int] = []
        self.gateway_urls: list[str] = []

    async def fake(self, i: int, o: argparse.Namespace, **override: float) -> None:
        o = argparse.Namespace(**{**vars(o), **override})
        port = free_port()
        p = Proc(f"fake-{i}", [sys.executable, str(BENCH / "fake_vllm.py"), "--port", str(port),
                               "--tokens", str(o.tokens), "--token-delay-ms", str(o.token_delay_ms),
                               "--max-running", str(o.max_running),
                               "--lora-load-ms", str(o.lora_load_ms)],
                 self.work / "logs" / f"fake-{i}-{port}.log", cwd=ROOT)  # fmt: skip
        self.procs.append(p)
        await wait_ready(f"http://127.0.0.1:{port}/health", p, 30)
        self.engine_ports.append(port)

    async def gateway(self, i: int, models: Path, routing: str, max_loras: int) -> None:
        port = free_port()
        env = {**os.environ, "ROYALTY_ROUTING": routing, "ROYALTY_MAX_LORAS": str(max_loras),
               "ROYALTY_DEMO": "0", "ROYALTY_SHIP_INTERVAL_S": "0.2",
               "ROYALTY_TRAINING_WORKER": "0"}  # fmt: skip
        env.pop("ROYALTY_ENGINE_URLS", None)
        urls = [a for p in self.engine_ports for a in ("--engine-url", f"http://127.0.0.1:{p}")]
        tag = f"{routing}-{len(self.engine_ports)}e-{i}-{port}"
        p = Proc(f"gateway-{tag}", [ROYALTY, "up", *urls, "--models-dir", str(models),
                                    "--database-url", self.db, "--data-dir",
                                    str(self.work / f"gw-{tag}"), "--port", str(port),
                                    "--no-demo-key"],
                 self.work / "logs" / f"gateway-{tag}.log", env=env, cwd=ROOT)  # fmt: skip
        self.procs.append(p)
        await wait_ready(f"http://127.0.0.1:{port}/healthz", p, 180)
        self.gateway_urls.append(f"http://127.0.0.1:{port}")

    async def load_calls(self) -> int:
        total = 0
        async with aiohttp.ClientSession() as s:
            for port in self.engine_ports:
                async with s.get(f"http://127.0.0.1:{port}/fake/stats") as r:
                    total += int((await r.json())["load_calls"])
        return total

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


async def create_key(db: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        ROYALTY, "keys", "create", "--account", "bench-scale", "--rpm", "100000000",
        "--tpm", "1000000000", "--database-url", db,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err.decode()[-2000:])
    return out.decode().strip().splitlines()[-1]


async def drive(
    res: Result, urls: list[str], key: str, models: list[str], weights: list[float],
    warmup_s: float, duration_s: float, seed: int,
) -> None:  # fmt: skip
    """Closed loop: `concurrency` workers, spread over the gateways, each sending its next
    streaming request when the last one ends; the model of each request drawn by `weights`."""
    rng = random.Random(seed)
    hdr = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    t_warm = time.perf_counter() + warmup_s
    t_end = t_warm + duration_s
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:

        async def worker(w: int) -> None:
            url = urls[w % len(urls)] + "/v1/chat/completions"
            while (t0 := time.perf_counter()) < t_end:
                model = rng.choices(models, weights)[0]
                body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": "Say something."}]}  # fmt: skip
                tokens, ok, why = 0, False, ""
                try:
                    async with s.post(url, data=json.dumps(body), headers=hdr) as r:
                        raw = await r.read()
                    ok = r.status == 200 and raw.rstrip().endswith(b"data: [DONE]")
                    why = f"HTTP {r.status}: {raw[:160]!r}"
                    i = raw.rfind(b'"completion_tokens":')
                    if ok and i >= 0:
                        tokens = int(raw[i + 20 :].split(b",", 1)[0].split(b"}", 1)[0])
                except (aiohttp.ClientError, TimeoutError) as e:
                    why = f"{e.__class__.__name__}: {e}"
                t1 = time.perf_counter()
                if not t_warm <= t1 <= t_end:
                    continue
                if ok:
                    res.requests += 1
                    res.tokens += tokens
                    res.latencies_ms.append((t1 - t0) * 1000)
                else:
                    res.errors += 1
                    if len(res.error_samples) < 3:
                        res.error_samples.append(why)

        await asyncio.gather(*(worker(w) for w in range(res.concurrency)))


async def run_config(
    o: argparse.Namespace, work: Path, key_box: list[str], *, name: str, engines: int,
    gateways: int, routing: str, models: list[str], weights: list[float], max_loras: int,
    model_dir: Path, fake: dict[str, float] | None = None,
) -> Result:  # fmt: skip
    stack = Stack(work, o.database_url)
    try:
        for i in range(engines):
            await stack.fake(i, o, **(fake or {}))
        for i in range(gateways):
            await stack.gateway(i, model_dir, routing, max_loras)
        if not key_box:
            key_box.append(await create_key(o.database_url))
        res = Result(name, engines, gateways, routing, o.concurrency, o.duration)
        loads0 = await stack.load_calls()
        await drive(res, stack.gateway_urls, key_box[0], models, weights, o.warmup, o.duration,
                    seed=o.seed)  # fmt: skip
        # Loads over the whole drive, warm-up included: the same span for every configuration.
        res.adapter_loads = await stack.load_calls() - loads0
        print(f"  {name}: {res.requests / o.duration:.0f} req/s, errors {res.errors}", flush=True)
        return res
    finally:
        stack.stop()


async def amain(o: argparse.Namespace) -> int:
    await ensure_database(o.database_url)
    started = dt.datetime.now(dt.UTC)
    results: list[Result] = []
    key_box: list[str] = []
    adapters = [f"lora-{i:02d}" for i in range(o.adapters)]
    # Zipf popularity (s = 1): a few adapters hot, a long tail, as adapter traffic tends to be.
    zipf = [1.0 / (i + 1) for i in range(o.adapters)]
    with tempfile.TemporaryDirectory(prefix="royalty-scale-") as tmp:
        work = Path(tmp)
        model_dir = write_models(work / "models", adapters)
        print("scale-out (base model, no adapters):", flush=True)
        for engines, gateways in ((1, 1), (2, 1), (1, 2), (2, 2)):
            results.append(await run_config(
                o, work, key_box, name=f"{engines} engine(s) x {gateways} gateway(s)",
                engines=engines, gateways=gateways, routing="affinity", models=[BASE],
                weights=[1.0], max_loras=o.max_loras, model_dir=model_dir))  # fmt: skip
        print(f"routing ({o.adapters} adapters, Zipf popularity, max_loras {o.max_loras} "
              f"per engine):", flush=True)  # fmt: skip
        for routing in ("affinity", "round_robin"):
            results.append(await run_config(
                o, work, key_box, name=f"{routing}, 2 engines x 1 gateway", engines=2,
                gateways=1, routing=routing, models=adapters, weights=zipf,
                max_loras=o.max_loras, model_dir=model_dir))  # fmt: skip
        # Engines that answer at once (no pacing, no batch limit): the gateway is the limit.
        print("gateway-bound (unpaced fake engines):", flush=True)
        for gateways in (1, 2):
            results.append(await run_config(
                o, work, key_box, name=f"gateway-bound: 2 fast engines x {gateways} gateway(s)",
                engines=2, gateways=gateways, routing="affinity", models=[BASE], weights=[1.0],
                max_loras=o.max_loras, model_dir=model_dir,
                fake={"token_delay_ms": 0.0, "max_running": 0}))  # fmt: skip
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_avg_at_end": os.getloadavg(),
        "options": {k: v for k, v in vars(o).items() if k != "database_url"},
    }
    rows = [r.row() for r in results]
    cols = ["config", "req/s", "tokens/s", "p50 ms", "p99 ms", "adapter loads",
            "loads/100 req", "errors"]  # fmt: skip

    def f(x: float | None, fmt: str = "{:.0f}") -> str:
        return "–" if x is None else fmt.format(x)

    table = md_table(cols, [[r["config"], f(r["rps"]), f(r["tokens_per_s"]), f(r["p50_ms"]),
                             f(r["p99_ms"]), str(r["adapter_loads"]),
                             f(r["loads_per_100_req"], "{:.1f}"), str(r["errors"])]
                            for r in rows])  # fmt: skip
    print(table)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (out / f"scale_out-{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                            indent=2, default=str))  # fmt: skip
    (out / f"scale_out-{stamp}.md").write_text(table + "\n")
    print(f"load average at the end: {os.getloadavg()}")
    return 0 if all(r.errors == 0 for r in results) else 1


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per config")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--token-delay-ms", type=float, default=10.0)
    p.add_argument("--max-running", type=int, default=16, help="each fake engine's batch")
    p.add_argument("--lora-load-ms", type=float, default=100.0)
    p.add_argument("--adapters", type=int, default=20)
    p.add_argument("--max-loras", type=int, default=4, help="LoRA slots per engine")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="8 s per configuration")
    o = p.parse_args(argv)
    if o.quick:
        o.duration, o.warmup = 8.0, 2.0
    sys.exit(asyncio.run(amain(o)))


if __name__ == "__main__":
    main()
