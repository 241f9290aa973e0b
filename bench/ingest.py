"""Datanet ingest throughput: records/s, bulk and single, with every check on.

One run compares, on the same machine and database, at each datanet size (default 10k and 1M
records):

- `bulk`: JSONL lines through `DatanetService.submit_bulk`, `--batch` lines a call (an HTTP
  bulk upload or `royalty datanet import` chunk), spread over `--contributors` contributors,
  per-contributor rate limit ON (a limit above their share, so the count runs and never
  fires), exact duplicates, near duplicates (MinHash/LSH) and quality rules ON;
- `single`: `--single` more records, one `submit` call each, into the datanet of that size;
- `previous bulk` / `previous single`: the same through the implementation before the
  optimisation (`--baseline-rev`, taken from git into a temporary directory and run in a
  subprocess), at the sizes up to `--baseline-max` (the previous code needs ~4 minutes a
  million records);
- snapshot publish time at each size, and inclusion proof time: the stored-levels proof
  (`DatanetService.inclusion_proof`) against rebuilding the whole tree (the previous proof).

Records are realistic and varied: the factory's recipe, astronomy and legal generators
(`factory/corpus.py`) with random variation (a contributor's note of 8-20 words from
the corpus vocabulary, random recasing), 20 % prompt/completion pairs, some metadata, and
planted exact duplicates (2 %, recased and respaced), near duplicates (3 %, one or two words
changed) and junk (1 %: too short, repetitive, non-text). After each bulk run the script
checks the invariants: one live record per content hash, every planted exact duplicate
rejected pointing at a live record, the counts by reason.

Columns: `rec/s` wall-clock; `py CPU µs/rec` the benchmark process's CPU time per record;
`pg CPU µs/rec` the CPU time of this run's Postgres backends per record (from /proc, when
the server is local). On a shared machine the CPU columns are the steadier ones.

    .venv/bin/python bench/ingest.py                       # 10k and 1M (~10 min)
    .venv/bin/python bench/ingest.py --sizes 10000 --quick # a minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/royalty_bench_ingest"
NEW_ACCOUNT = text("INSERT INTO accounts (name) VALUES (:name) RETURNING id")
LIVE_DOUBLES = text(
    "SELECT count(*) FROM (SELECT content_hash FROM contributions WHERE datanet_id = :d "
    "AND status <> 'rejected' GROUP BY content_hash HAVING count(*) > 1) AS x"
)
DUP_TARGETS_LIVE = text(
    "SELECT count(*) FROM contributions d JOIN contributions f ON f.id = d.duplicate_of "
    "WHERE d.datanet_id = :d AND d.reason = 'duplicate' AND f.status <> 'rejected' "
    "AND f.content_hash = d.content_hash"
)
BACKEND_PIDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"


# --- records ---------------------------------------------------------------------------------
def make_records(n: int, seed: int) -> tuple[list[bytes], dict[str, int]]:
    """`n` JSONL lines and how many of each planted kind they hold."""
    from factory import corpus

    rng = random.Random(seed)
    pool_size = min(20_000, max(2_000, n // 30))
    pools = [corpus.domain_records(d, seed, pool_size) for d in corpus.DOMAINS]
    vocab = sorted({w.strip(".,;:") for p in pools for r in p[:2000] for w in r.split()})
    originals: list[dict[str, Any]] = []
    lines: list[bytes] = []
    planted: Counter[str] = Counter()
    enc = msgspec.json.encode
    for i in range(n):
        roll = rng.random()
        if originals and roll < 0.02:
            rec = dict(rng.choice(originals))
            key = "text" if "text" in rec else "completion"
            rec[key] = "  " + rec[key].upper().replace(" ", "  \n")
            planted["exact_duplicate"] += 1
        elif originals and roll < 0.05:
            rec = dict(rng.choice(originals))
            key = "text" if "text" in rec else "completion"
            words = rec[key].split()
            for _ in range(rng.randint(1, 2)):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            rec[key] = " ".join(words)
            planted["near_duplicate"] += 1
        elif roll < 0.06:
            rec = rng.choice(
                [
                    {"text": "too short"},
                    {"text": "buy now " * 30},
                    {"text": "1234 5678 $$$$ %%%% " * 3},
                ]
            )
            planted["junk"] += 1
        else:
            body = rng.choice(pools[i % 3])
            note = " ".join(rng.choices(vocab, k=rng.randint(8, 20)))
            body = f"{body} {note.capitalize()}."
            if rng.random() < 0.2:
                cut = body.find(". ") + 1 or len(body) // 2
                rec = {"prompt": body[:cut], "completion": body[cut:].strip() or "Yes."}
            else:
                rec = {"text": body}
            if rng.random() < 0.1:
                rec["metadata"] = {"source": f"contrib-{rng.randrange(100)}", "n": i}
            originals.append(rec)
        lines.append(enc(rec))
    return lines, dict(planted)


# --- measuring -------------------------------------------------------------------------------
def _proc_cpu(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


class Meter:
    """Wall time, this process's CPU and the database's backends' CPU over a block."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> Meter:
        self.conn = await asyncpg.connect(self.url)
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.pg0 = await self._pg()
        return self

    async def _pg(self) -> float:
        pids = [r[0] for r in await self.conn.fetch(BACKEND_PIDS)]
        self._pids = pids
        return _proc_cpu(pids)

    async def __aexit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        self.pg = _proc_cpu(self._pids) - self.pg0
        await self.conn.close()

    def row(self, what: str, size: int, n: int) -> dict[str, Any]:
        return {
            "what": what,
            "datanet size": size,
            "records": n,
            "rec/s": round(n / self.wall),
            "py CPU µs/rec": round(self.cpu / n * 1e6, 1),
            "pg CPU µs/rec": round(self.pg / n * 1e6, 1),
            "wall s": round(self.wall, 2),
        }


async def fresh_database(url: str) -> None:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = await asyncpg.connect(str(u.set(database="postgres")).replace("+asyncpg", ""))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{u.database}"')
    finally:
        await admin.close()


# --- one implementation's rounds (this tree, or the previous one in a subprocess) -----------
async def run_rounds(args: argparse.Namespace, label: str) -> list[dict[str, Any]]:
    from attribution.records import QualityPolicy
    from attribution.service import DatanetService
    from royalty.db import create_engine

    engine = create_engine(args.database_url)
    svc = DatanetService(engine)
    out: list[dict[str, Any]] = []
    sizes = [s for s in args.sizes if label == "" or s <= args.baseline_max]
    run = os.getpid()
    for size in sizes:
        lines, planted = make_records(size + args.single, seed=size)
        async with engine.begin() as conn:
            people = [
                (
                    await conn.execute(NEW_ACCOUNT, {"name": f"{label}c{size}-{i}-{run}"})
                ).scalar_one()
                for i in range(args.contributors)
            ]
        # a limit above each contributor's share: the count runs on every call, never fires
        share = max(args.batch, -(-size // args.contributors))
        policy = QualityPolicy(max_records_per_minute=2 * share)
        d = await svc.create_datanet(
            f"bench-{label.strip() or 'new'}-{size}-{run}", people[0], "CC-BY-4.0", policy=policy
        )
        bulk, single = lines[:size], lines[size:]
        results = []
        async with Meter(args.database_url) as m:
            for k, start in enumerate(range(0, size, args.batch)):
                part = await svc.submit_bulk(
                    d.id, people[k % len(people)], bulk[start : start + args.batch]
                )
                results.extend(part)
        out.append(
            m.row(f"{label}bulk ({args.batch}/call)", size, size)
            | {
                "by reason": dict(Counter(r.reason or r.status for r in results)),
                "planted": planted,
            }
        )
        async with engine.connect() as conn:
            doubles = (await conn.execute(LIVE_DOUBLES, {"d": d.id})).scalar_one()
            dup_ok = (await conn.execute(DUP_TARGETS_LIVE, {"d": d.id})).scalar_one()
        n_dups = sum(1 for r in results if r.reason == "duplicate")
        assert doubles == 0, f"{doubles} contents live twice"
        assert dup_ok == n_dups, "a duplicate points at a record that is not its live original"
        async with Meter(args.database_url) as m:
            for k, line in enumerate(single):
                try:
                    await svc.submit(d.id, people[k % len(people)], line)
                except Exception as e:  # rejections are answers too
                    if not hasattr(e, "result"):
                        raise
        out.append(m.row(f"{label}single (1/call)", size, len(single)))
        t = time.perf_counter()
        snap = await svc.publish(d.id)
        out.append(
            {
                "what": f"{label}publish snapshot",
                "datanet size": size,
                "records": snap.record_count,
                "wall s": round(time.perf_counter() - t, 2),
            }
        )
        if label == "":
            out.extend(await proof_rounds(svc, snap.id, snap.record_count, size, args))
    await engine.dispose()
    return out


async def proof_rounds(
    svc: Any, snapshot: str, count: int, size: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    from attribution.snapshots import inclusion_proof, verify_inclusion

    records = await svc.snapshot_records(snapshot)
    rng = random.Random(1)
    picks = [rng.randrange(len(records)) for _ in range(args.proofs)]
    root = bytes.fromhex((await svc.get_snapshot(snapshot)).root)
    t = time.perf_counter()
    for i in picks:
        p = await svc.inclusion_proof(snapshot, records[i][0])
        assert verify_inclusion(bytes.fromhex(p.record_hash), p.proof, root)
    stored = (time.perf_counter() - t) / len(picks)
    # the previous proof: every record hash of the snapshot, the whole tree hashed
    t = time.perf_counter()
    n_whole = 3
    for i in picks[:n_whole]:
        hashes = [bytes.fromhex(h) for _, h in await svc.snapshot_records(snapshot)]
        inclusion_proof(hashes, i)
    whole = (time.perf_counter() - t) / n_whole
    return [
        {
            "what": "inclusion proof, stored levels",
            "datanet size": size,
            "records": count,
            "ms/proof": round(stored * 1e3, 2),
        },
        {
            "what": "inclusion proof, whole tree (previous)",
            "datanet size": size,
            "records": count,
            "ms/proof": round(whole * 1e3, 1),
        },
    ]


def baseline_rounds(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The previous implementation's rounds, in a subprocess importing its `attribution`."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline_rev, "attribution"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        cmd = [sys.executable, __file__, "--worker", tmp, *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the previous implementation's run failed:\n{done.stderr[-3000:]}")
    rows: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    cols = [
        "what",
        "datanet size",
        "records",
        "rec/s",
        "py CPU µs/rec",
        "pg CPU µs/rec",
        "wall s",
        "ms/proof",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                f"{r[c]:,}" if isinstance(r.get(c), int) else str(r.get(c, "")) for c in cols
            )
            + " |"
        )
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at start "
        f"(other processes on the machine count in it), Python {platform.python_version()}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    ap.add_argument(
        "--sizes", default="10000,1000000", type=lambda s: [int(x) for x in s.split(",")]
    )
    ap.add_argument("--batch", type=int, default=10_000, help="records per bulk call")
    ap.add_argument("--single", type=int, default=2000, help="records submitted one per call")
    ap.add_argument("--contributors", type=int, default=50)
    ap.add_argument("--proofs", type=int, default=200)
    ap.add_argument("--baseline-rev", default="fba8a09~1", help="git revision of the previous code")
    ap.add_argument(
        "--baseline-max", type=int, default=10_000, help="largest size the previous code runs"
    )
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--quick", action="store_true", help="--single 300 --proofs 20")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.single, args.proofs = 300, 20
    if args.worker:  # the previous implementation, first on the path
        sys.path.insert(0, args.worker)
        print(json.dumps(asyncio.run(run_rounds(args, "previous "))))
        return
    print(f"machine: {machine()}", flush=True)

    async def setup() -> None:
        from royalty.db import create_engine, migrate

        await fresh_database(args.database_url)
        engine = create_engine(args.database_url)
        await migrate(engine)
        await engine.dispose()

    asyncio.run(setup())
    rows = asyncio.run(run_rounds(args, ""))
    if not args.no_baseline:
        rows += baseline_rounds(args)
    rows.sort(key=lambda r: (r["datanet size"], "previous" in r["what"], r["what"]))
    print(table(rows))
    for r in rows:
        if "by reason" in r:
            print(
                f"{r['what']} @ {r['datanet size']:,}: planted {r['planted']}; answers {r['by reason']}"
            )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"ingest-{stamp}.json").write_text(
        json.dumps({"machine": machine(), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
