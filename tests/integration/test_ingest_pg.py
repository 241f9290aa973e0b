"""The pipelined bulk ingest against a real PostgreSQL: calls cut into many chunks answer
exactly as one record at a time would; atomic calls write nothing across chunks; concurrent
bulk calls from many contributors lose or double nothing; windowed proofs for every record
of a snapshot; the rate limit across chunks."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution import ingest
from attribution.errors import BulkRejected
from attribution.records import QualityPolicy, SubmissionResult
from attribution.service import DatanetService
from attribution.snapshots import verify_inclusion

pytestmark = pytest.mark.integration

NEW_ACCOUNT = text("INSERT INTO accounts (name) VALUES (:name) RETURNING id")
LIVE_BY_HASH = text(
    "SELECT content_hash, count(*) FROM contributions "
    "WHERE datanet_id = :d AND status <> 'rejected' GROUP BY content_hash"
)
ROWS = text("SELECT count(*) FROM contributions WHERE datanet_id = :d")
VOCAB = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "nrstvxlm"]


def prose(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n)) + "."


def near_copy(seed: int) -> str:
    words = prose(seed, 120).split()
    words[60] = "changed"
    return " ".join(words)


async def accounts(engine: AsyncEngine, *names: str) -> list[int]:
    async with engine.begin() as conn:
        return [(await conn.execute(NEW_ACCOUNT, {"name": n})).scalar_one() for n in names]


def workload(seed: int, n: int) -> list[dict[str, Any]]:
    """Originals, exact duplicates (recased, respaced) and near copies of earlier records,
    and a few records that fail a quality rule or validation, shuffled."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        roll = rng.random()
        if out and roll < 0.15:
            earlier = rng.choice(out)
            if "text" in earlier:
                out.append({"text": "  " + earlier["text"].upper().replace(" ", "\n")})
                continue
        if roll < 0.25:
            out.append({"text": near_copy(seed * 1000 + rng.randrange(max(1, i)))})
        elif roll < 0.28:
            out.append({"text": "ab" * 30})
        elif roll < 0.30:
            out.append({"txt": "no schema"})
        elif roll < 0.4:
            out.append({"prompt": prose(seed * 7000 + i, 10), "completion": prose(i, 30)})
        else:
            out.append({"text": prose(seed * 1000 + i, 120)})
    return out


def shape(results: list[SubmissionResult]) -> list[tuple[Any, ...]]:
    """The answers with record ids replaced by positions (ids differ between datanets)."""
    pos: dict[int | None, int] = {r.record_id: r.index for r in results if r.record_id}
    return [
        (
            r.index,
            r.status,
            r.reason,
            pos.get(r.duplicate_of),
            pos.get(r.near_duplicate_of),
            r.content_hash,
        )
        for r in results
    ]


async def test_many_chunks_answer_like_one_record_at_a_time(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, alice = await accounts(engine, "owner", "alice")
    svc = DatanetService(engine)
    policy = QualityPolicy(max_records_per_minute=None)
    records = workload(1, 300)
    one = await svc.create_datanet("one-by-one", owner, "MIT", policy=policy)
    singly = []
    for i, rec in enumerate(records):
        (r,) = await svc.submit_bulk(one.id, alice, [rec])
        r.index = i
        singly.append(r)
    monkeypatch.setattr(ingest, "CHUNK", 16)
    monkeypatch.setattr(ingest, "_PREPARE_STEP", 5)
    many = await svc.create_datanet("chunked", owner, "MIT", policy=policy)
    chunked = await svc.submit_bulk(many.id, alice, records)
    assert shape(chunked) == shape(singly)
    statuses = Counter(r.status for r in chunked)
    reasons = Counter(r.reason for r in chunked)
    assert statuses["accepted"] > 100 and reasons["duplicate"] > 10
    assert reasons["near_duplicate"] > 10 and reasons["repetitive"] > 0
    assert reasons["invalid_schema"] > 0
    # every duplicate points at the live record holding its content, written in this call
    live = {r.content_hash: r.record_id for r in chunked if r.status in ("accepted", "flagged")}
    for r in chunked:
        if r.reason == "duplicate":
            assert r.duplicate_of == live[r.content_hash]
    async with engine.connect() as conn:
        counts = (await conn.execute(LIVE_BY_HASH, {"d": many.id})).all()
        rows = (await conn.execute(ROWS, {"d": many.id})).scalar_one()
    assert all(c == 1 for _, c in counts) and len(counts) == len(live)
    assert rows == sum(1 for r in chunked if r.record_id is not None)
    # another process (a fresh service) rebuilds the index from the stored signatures
    i, original = next(
        (i, rec["text"])
        for i, rec in enumerate(records)
        if chunked[i].status == "accepted" and "text" in rec
    )
    words = original.split()
    words[10] = "fresh"
    again = await DatanetService(engine).submit(many.id, alice, {"text": " ".join(words)})
    assert again.status == "flagged" and again.near_duplicate_of == chunked[i].record_id


async def test_atomic_rejection_in_a_late_chunk_writes_nothing(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "CHUNK", 10)
    owner, alice = await accounts(engine, "owner", "alice")
    svc = DatanetService(engine)
    d = await svc.create_datanet(
        "dn", owner, "MIT", policy=QualityPolicy(max_records_per_minute=None)
    )
    records: list[dict[str, Any]] = [{"text": prose(i)} for i in range(45)]
    records[41] = {"text": prose(3)}  # duplicate of line 3, in the fifth chunk
    with pytest.raises(BulkRejected) as e:
        await svc.submit_bulk(d.id, alice, records, atomic=True)
    results = e.value.results
    assert len(results) == 45 and [r.index for r in results] == list(range(45))
    assert results[41].reason == "duplicate" and results[41].duplicate_of == results[3].record_id
    async with engine.connect() as conn:
        assert (await conn.execute(ROWS, {"d": d.id})).scalar_one() == 0
    # the in-process index forgot what the failed call added: the same records go in now
    del records[41]
    ok = await svc.submit_bulk(d.id, alice, records, atomic=True)
    assert {r.status for r in ok} == {"accepted"}


async def test_concurrent_bulk_calls_lose_and_double_nothing(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "CHUNK", 25)
    owner, *people = await accounts(engine, "owner", *[f"c{i}" for i in range(6)])
    d = await DatanetService(engine).create_datanet(
        "dn", owner, "MIT", policy=QualityPolicy(max_records_per_minute=None)
    )
    # overlapping contents: every text appears in the uploads of three contributors
    texts = [prose(5000 + i) for i in range(120)]
    uploads = [
        [{"text": t} for j, t in enumerate(texts) if j % 6 in {p, (p + 1) % 6, (p + 2) % 6}]
        for p in range(6)
    ]
    services = [DatanetService(engine) for _ in people]  # separate processes, in effect
    results = await asyncio.gather(
        *(s.submit_bulk(d.id, c, u) for s, c, u in zip(services, people, uploads, strict=True))
    )
    flat = [r for rs in results for r in rs]
    assert len(flat) == sum(len(u) for u in uploads)
    accepted = [r for r in flat if r.status == "accepted"]
    dups = [r for r in flat if r.reason == "duplicate"]
    assert len(accepted) == 120 and len(dups) == 240
    first = {r.content_hash: r.record_id for r in accepted}
    assert all(r.duplicate_of == first[r.content_hash] for r in dups)
    async with engine.connect() as conn:
        counts = (await conn.execute(LIVE_BY_HASH, {"d": d.id})).all()
        assert (await conn.execute(ROWS, {"d": d.id})).scalar_one() == 360
    assert len(counts) == 120 and all(c == 1 for _, c in counts)


async def test_rate_limit_spans_chunks(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "CHUNK", 10)
    owner, alice = await accounts(engine, "owner", "alice")
    svc = DatanetService(engine)
    d = await svc.create_datanet(
        "dn", owner, "MIT", policy=QualityPolicy(max_records_per_minute=25)
    )
    first = await svc.submit_bulk(d.id, alice, [{"text": prose(i)} for i in range(20)])
    assert all(r.status == "accepted" for r in first)
    second = await svc.submit_bulk(d.id, alice, [{"text": prose(100 + i)} for i in range(12)])
    assert [r.status for r in second] == ["accepted"] * 5 + ["rejected"] * 7
    assert {r.reason for r in second[5:]} == {"rate_limited"}
    # the trusted path skips the limit
    trusted = await svc.submit_bulk(
        d.id, alice, [{"text": prose(200 + i)} for i in range(30)], rate_limit=False
    )
    assert all(r.status == "accepted" for r in trusted)


async def test_windowed_proofs_for_every_record(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, alice = await accounts(engine, "owner", "alice")
    svc = DatanetService(engine)
    d = await svc.create_datanet(
        "dn", owner, "MIT", policy=QualityPolicy(max_records_per_minute=None)
    )
    await svc.submit_bulk(d.id, alice, [{"text": prose(i)} for i in range(300)])
    snap = await svc.publish(d.id)
    assert snap.record_count == 300
    async with engine.connect() as conn:
        levels = (
            await conn.execute(
                text("SELECT level, length(nodes) FROM snapshot_levels WHERE snapshot_id = :s"),
                {"s": snap.id},
            )
        ).all()
    assert sorted(levels) == [(4, 19 * 32), (8, 2 * 32)]
    records = await svc.snapshot_records(snap.id)
    root = bytes.fromhex(snap.root)
    for rid, h in records:
        p = await svc.inclusion_proof(snap.id, rid, alice)
        assert p.record_hash == h and verify_inclusion(bytes.fromhex(h), p.proof, root)
    # a snapshot published before levels were stored: the whole-tree fallback, same proofs
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE snapshot_levels DISABLE TRIGGER USER"))
        await conn.execute(
            text("DELETE FROM snapshot_levels WHERE snapshot_id = :s"), {"s": snap.id}
        )
        await conn.execute(text("ALTER TABLE snapshot_levels ENABLE TRIGGER USER"))
    for rid, _ in records[::37]:
        old = await svc.inclusion_proof(snap.id, rid)
        assert verify_inclusion(bytes.fromhex(old.record_hash), old.proof, root)
    # stored levels are append-only like the snapshot itself
    with pytest.raises(Exception, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM snapshot_levels"))
