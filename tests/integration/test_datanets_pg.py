"""DatanetService against a real PostgreSQL: duplicates across contributors, near
duplicates, concurrent submissions, curation, snapshots, proofs, privacy, rate limits."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.errors import (
    BulkRejected,
    Conflict,
    DuplicateRecord,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    RecordRejected,
)
from attribution.records import QualityPolicy
from attribution.service import DatanetService
from attribution.snapshots import verify_inclusion

pytestmark = pytest.mark.integration

NEW_ACCOUNT = text("INSERT INTO accounts (name) VALUES (:name) RETURNING id")
SNAPSHOT_ROWS = text(
    "SELECT s.id, s.root, s.record_count, s.token_count, r.position, r.record_id, r.record_hash "
    "FROM snapshots s JOIN snapshot_records r ON r.snapshot_id = s.id "
    "WHERE s.id = :id ORDER BY r.position"
)
COUNT_LIVE = text(
    "SELECT count(*) FROM contributions WHERE datanet_id = :d AND status <> 'rejected'"
)

VOCAB = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "nrstvxlm"]


def prose(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n)) + "."


async def accounts(engine: AsyncEngine, *names: str) -> list[int]:
    async with engine.begin() as conn:
        return [(await conn.execute(NEW_ACCOUNT, {"name": n})).scalar_one() for n in names]


@pytest.fixture
async def svc(engine: AsyncEngine) -> DatanetService:
    return DatanetService(engine)


async def test_create_and_list(svc: DatanetService, engine: AsyncEngine) -> None:
    owner, cur = await accounts(engine, "owner", "cur")
    d = await svc.create_datanet(
        "med-qa", owner, "CC-BY-4.0", "curated", "medical QA", curators=[cur]
    )
    assert d.acceptance_mode == "curated" and d.curators == [cur]
    assert d.is_curator(owner) and d.is_curator(cur) and not d.is_curator(cur + 100)
    assert [x.name for x in await svc.list_datanets()] == ["med-qa"]
    assert (await svc.get_datanet(d.id)).policy == QualityPolicy()
    with pytest.raises(Conflict):
        await svc.create_datanet("med-qa", owner, "MIT")
    with pytest.raises(Invalid):
        await svc.create_datanet("Bad Name!", owner, "MIT")
    with pytest.raises(NotFound):
        await svc.create_datanet("other", 999_999, "MIT")
    with pytest.raises(NotFound):
        await svc.get_datanet(999_999)


async def test_exact_duplicate_across_contributors(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, alice, bob = await accounts(engine, "owner", "alice", "bob")
    d = await svc.create_datanet("dn", owner, "MIT")
    first = await svc.submit(d.id, alice, {"text": prose(1)})
    assert first.status == "accepted" and first.record_id is not None
    # bob resubmits the same content with different casing and spacing
    with pytest.raises(DuplicateRecord) as e:
        await svc.submit(d.id, bob, {"text": "  " + prose(1).upper().replace(" ", "\n ")})
    assert isinstance(e.value, Conflict)  # 409 over HTTP (gateway/error_table.py)
    assert e.value.result.duplicate_of == first.record_id
    assert e.value.result.reason == "duplicate"
    # the rejection is visible to bob, without its content; alice keeps the credit
    (bob_rec,) = await svc.records_of(bob, bob)
    assert bob_rec.status == "rejected" and bob_rec.duplicate_of == first.record_id
    assert bob_rec.text is None
    snap = await svc.publish(d.id, owner)
    assert snap.record_count == 1
    assert await svc.snapshot_records(snap.id) == [(first.record_id, first.content_hash)]


async def test_near_duplicate_flagged_and_not_credited(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, alice, bob = await accounts(engine, "owner", "alice", "bob")
    d = await svc.create_datanet("dn", owner, "MIT")
    original = await svc.submit(d.id, alice, {"text": prose(2, 120)})
    words = prose(2, 120).split()
    words[50] = "changed"
    near = await svc.submit(d.id, bob, {"text": " ".join(words)})
    assert near.status == "flagged" and near.reason == "near_duplicate"
    assert near.near_duplicate_of == original.record_id
    other = await svc.submit(d.id, bob, {"text": prose(3, 120)})
    assert other.status == "accepted"
    snap = await svc.publish(d.id)
    ids = [rid for rid, _ in await svc.snapshot_records(snap.id)]
    assert ids == [original.record_id, other.record_id]
    # flagged records wait for curators, who may clear them
    assert [r.id for r in await svc.pending(d.id, owner)] == [near.record_id]
    assert near.record_id is not None
    await svc.decide(near.record_id, owner, True, "different enough: new ending")
    snap2 = await svc.publish(d.id)
    assert snap2.record_count == 3


async def test_concurrent_same_content_exactly_one_accepted(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, *contributors = await accounts(engine, "owner", *[f"c{i}" for i in range(20)])
    d = await svc.create_datanet("dn", owner, "MIT")
    # each task has its own service object: no shared in-process state helps
    services = [DatanetService(engine) for _ in contributors]
    results = await asyncio.gather(
        *(
            s.submit(d.id, c, {"text": prose(4)})
            for s, c in zip(services, contributors, strict=True)
        ),
        return_exceptions=True,
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    dups = [r for r in results if isinstance(r, DuplicateRecord)]
    assert len(accepted) == 1 and len(dups) == 19, results
    assert {e.result.duplicate_of for e in dups} == {accepted[0].record_id}
    async with engine.connect() as conn:
        assert (await conn.execute(COUNT_LIVE, {"d": d.id})).scalar_one() == 1


async def test_concurrent_distinct_content_none_lost(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, *contributors = await accounts(engine, "owner", *[f"c{i}" for i in range(10)])
    d = await svc.create_datanet("dn", owner, "MIT")
    results = await asyncio.gather(
        *(
            DatanetService(engine).submit_bulk(
                d.id, c, [{"text": prose(1000 * i + j)} for j in range(20)]
            )
            for i, c in enumerate(contributors)
        )
    )
    assert all(r.status == "accepted" for rs in results for r in rs)
    async with engine.connect() as conn:
        assert (await conn.execute(COUNT_LIVE, {"d": d.id})).scalar_one() == 200


async def test_curated_flow_records_decisions(svc: DatanetService, engine: AsyncEngine) -> None:
    owner, cur, alice, mallory = await accounts(engine, "owner", "cur", "alice", "mallory")
    d = await svc.create_datanet("dn", owner, "MIT", "curated", curators=[cur])
    a = await svc.submit(d.id, alice, {"prompt": "Explain tides.", "completion": prose(5)})
    b = await svc.submit(d.id, alice, {"text": prose(6)})
    assert a.status == b.status == "pending"
    assert a.record_id is not None and b.record_id is not None
    with pytest.raises(Invalid):
        await svc.publish(d.id, cur)  # nothing accepted yet
    with pytest.raises(Forbidden):
        await svc.pending(d.id, alice)
    with pytest.raises(Forbidden):
        await svc.decide(a.record_id, mallory, True, "looks fine to me")
    assert [r.id for r in await svc.pending(d.id, cur)] == [a.record_id, b.record_id]
    dec_a = await svc.decide(a.record_id, cur, True, "accurate and well sourced")
    dec_b = await svc.decide(b.record_id, owner, False, "off topic")
    assert (dec_a.to_status, dec_b.to_status) == ("accepted", "rejected")
    with pytest.raises(Conflict):
        await svc.decide(a.record_id, cur, False, "changed my mind")
    with pytest.raises(Invalid):
        await svc.decide(b.record_id, cur, True, "  ")
    assert await svc.pending(d.id, cur) == []
    decisions = await svc.decisions(a.record_id, alice)
    assert [(x.curator_account_id, x.approve, x.reason) for x in decisions] == [
        (cur, True, "accurate and well sourced")
    ]
    rec_b = await svc.get_record(b.record_id, alice)
    assert rec_b.status == "rejected" and rec_b.reason == "curator_rejected"
    assert rec_b.detail == "off topic"
    # decisions are append-only
    async with engine.connect() as conn:
        with pytest.raises(DBAPIError):
            await conn.execute(text("UPDATE curator_decisions SET reason = 'x'"))
    # a rejected record's content may be submitted again (its hash is no longer live)
    again = await svc.submit(d.id, mallory, {"text": prose(6)})
    assert again.status == "pending"
    snap = await svc.publish(d.id, cur)
    assert snap.record_count == 1


async def test_snapshot_immutable_and_next_snapshot_has_both(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, alice, bob = await accounts(engine, "owner", "alice", "bob")
    d = await svc.create_datanet("dn", owner, "MIT")
    r1 = await svc.submit(d.id, alice, {"text": prose(7)})
    s1 = await svc.publish(d.id, owner)
    async with engine.connect() as conn:
        before = (await conn.execute(SNAPSHOT_ROWS, {"id": s1.id})).all()
    assert s1.seq == 1 and s1.record_count == 1 and s1.token_count == 60
    # publishing with nothing new is idempotent
    assert (await svc.publish(d.id)).id == s1.id
    r2 = await svc.submit(d.id, bob, {"text": prose(8)})
    s2 = await svc.publish(d.id, owner)
    assert s2.id != s1.id and s2.seq == 2 and s2.root != s1.root
    assert [rid for rid, _ in await svc.snapshot_records(s2.id)] == [r1.record_id, r2.record_id]
    async with engine.connect() as conn:
        after = (await conn.execute(SNAPSHOT_ROWS, {"id": s1.id})).all()
    assert after == before
    assert await svc.get_snapshot(s1.id) == s1
    # the database refuses to change a snapshot
    for stmt in (
        "UPDATE snapshots SET record_count = 5",
        "DELETE FROM snapshot_records",
        "UPDATE snapshot_records SET position = position + 10",
    ):
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError):
                await conn.execute(text(stmt))
    assert [s.id for s in await svc.snapshots(d.id)] == [s1.id, s2.id]
    contents = await svc.snapshot_contents(s2.id)
    assert [(c.position, c.record_id, c.text) for c in contents] == [
        (0, r1.record_id, prose(7)),
        (1, r2.record_id, prose(8)),
    ]
    assert await svc.snapshot_contributors(s2.id) == {alice: 1, bob: 1}
    assert await svc.snapshot_contributors(s1.id) == {alice: 1}
    with pytest.raises(NotFound):
        await svc.snapshot_contents("00" * 32)


async def test_inclusion_proof_from_db_verifies(svc: DatanetService, engine: AsyncEngine) -> None:
    owner, alice, bob = await accounts(engine, "owner", "alice", "bob")
    d = await svc.create_datanet("dn", owner, "MIT")
    results = await svc.submit_bulk(d.id, alice, [{"text": prose(100 + i)} for i in range(11)])
    theirs = await svc.submit(d.id, bob, {"text": prose(200)})
    snap = await svc.publish(d.id)
    for r in results:
        assert r.record_id is not None and r.content_hash is not None
        p = await svc.inclusion_proof(snap.id, r.record_id, alice)
        assert p.record_hash == r.content_hash and p.root == snap.root
        assert verify_inclusion(bytes.fromhex(p.record_hash), p.proof, bytes.fromhex(snap.root))
        assert not verify_inclusion(
            bytes.fromhex(theirs.content_hash or ""), p.proof, bytes.fromhex(snap.root)
        )
    # alice cannot get a proof for bob's record (existence not revealed)
    assert theirs.record_id is not None
    with pytest.raises(NotFound):
        await svc.inclusion_proof(snap.id, theirs.record_id, alice)
    later = await svc.submit(d.id, alice, {"text": prose(300)})
    assert later.record_id is not None
    with pytest.raises(NotFound):
        await svc.inclusion_proof(snap.id, later.record_id, alice)


async def test_contributor_reads_only_own_records(svc: DatanetService, engine: AsyncEngine) -> None:
    owner, alice, bob = await accounts(engine, "owner", "alice", "bob")
    d = await svc.create_datanet("dn", owner, "MIT")
    a = await svc.submit(d.id, alice, {"text": prose(9), "metadata": {"source": "notes"}})
    assert a.record_id is not None
    mine = await svc.records_of(alice, alice)
    assert [r.id for r in mine] == [a.record_id] and mine[0].metadata == {"source": "notes"}
    with pytest.raises(Forbidden):
        await svc.records_of(alice, bob)
    with pytest.raises(NotFound):
        await svc.get_record(a.record_id, bob)
    with pytest.raises(NotFound):
        await svc.decisions(a.record_id, bob)
    assert (await svc.get_record(a.record_id, owner)).text == prose(9)  # a curator may
    assert await svc.records_of(bob, bob) == []
    assert len(await svc.records_of(alice, None)) == 1  # trusted caller


async def test_rate_limit(svc: DatanetService, engine: AsyncEngine) -> None:
    owner, alice, bob = await accounts(engine, "owner", "alice", "bob")
    d = await svc.create_datanet("dn", owner, "MIT", policy=QualityPolicy(max_records_per_minute=5))
    results = await svc.submit_bulk(
        d.id, alice, [{"text": prose(400 + i)} for i in range(4)] + [{"text": "junk"}] * 3
    )
    # junk counts: 4 accepted, 1 too_short stored, then the limit of 5 is reached
    assert [r.reason for r in results] == [None] * 4 + ["too_short"] + ["rate_limited"] * 2
    with pytest.raises(RateLimited) as e:
        await svc.submit(d.id, alice, {"text": prose(500)})
    assert isinstance(e.value, RateLimited)  # 429 over HTTP
    # per contributor: bob is unaffected
    assert (await svc.submit(d.id, bob, {"text": prose(501)})).status == "accepted"
    # rate-limited submissions leave no row
    assert len(await svc.records_of(alice, alice)) == 5
    # a trusted import is not limited
    bulk = await svc.submit_bulk(
        d.id, alice, [{"text": prose(900 + i)} for i in range(10)], rate_limit=False
    )
    assert all(r.status == "accepted" for r in bulk)


async def test_quality_rejections_and_atomic_bulk(svc: DatanetService, engine: AsyncEngine) -> None:
    owner, alice = await accounts(engine, "owner", "alice")
    d = await svc.create_datanet("dn", owner, "MIT")
    with pytest.raises(RecordRejected) as e:
        await svc.submit(d.id, alice, {"text": "spam spam " * 30})
    assert e.value.result.reason == "repetitive"
    with pytest.raises(RecordRejected) as e:
        await svc.submit(d.id, alice, b'{"text": "\xff"}')
    assert e.value.result.reason == "invalid_utf8" and e.value.result.record_id is None
    before = len(await svc.records_of(alice, alice))
    batch: list[object] = [{"text": prose(600 + i)} for i in range(5)]
    batch.insert(3, {"text": prose(600)})  # an exact duplicate inside the batch
    with pytest.raises(BulkRejected) as be:
        await svc.submit_bulk(d.id, alice, batch, atomic=True)  # type: ignore[arg-type]
    statuses = [r.status for r in be.value.results]
    assert statuses == ["accepted"] * 3 + ["rejected"] + ["accepted"] * 2
    assert be.value.results[3].duplicate_of == be.value.results[0].record_id
    assert len(await svc.records_of(alice, alice)) == before  # nothing half-written
    # near-dup index was not polluted by the rolled-back batch
    ok = await svc.submit_bulk(d.id, alice, batch[:3] + batch[4:], atomic=True)  # type: ignore[arg-type]
    assert [r.status for r in ok] == ["accepted"] * 5
    # non-atomic: each line answered, good ones kept
    mixed = await svc.submit_bulk(
        d.id, alice, [{"text": prose(700)}, b"{oops", {"text": prose(700)}, {"text": "tiny"}]
    )
    assert [(r.status, r.reason) for r in mixed] == [
        ("accepted", None),
        ("rejected", "invalid_schema"),
        ("rejected", "duplicate"),
        ("rejected", "too_short"),
    ]
    assert [r.index for r in mixed] == [0, 1, 2, 3]


async def test_restart_keeps_near_dup_detection(engine: AsyncEngine) -> None:
    owner, alice, bob = await accounts(engine, "owner", "alice", "bob")
    first = DatanetService(engine)
    d = await first.create_datanet("dn", owner, "MIT")
    originals = await first.submit_bulk(
        d.id, alice, [{"text": prose(800 + i, 100)} for i in range(30)]
    )
    # a new process: nothing in memory
    second = DatanetService(engine)
    words = prose(815, 100).split()
    words[10] = "different"
    r = await second.submit(d.id, bob, {"text": " ".join(words)})
    assert r.status == "flagged" and r.near_duplicate_of == originals[15].record_id
    # and the first service, still running, catches up with records it did not write
    words = prose(2000, 100).split()
    await second.submit(d.id, bob, {"text": " ".join(words)})
    words[20] = "other"
    r2 = await first.submit(d.id, alice, {"text": " ".join(words)})
    assert r2.status == "flagged"


async def test_near_duplicates_within_one_batch_and_pairs(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, alice = await accounts(engine, "owner", "alice")
    d = await svc.create_datanet("dn", owner, "MIT")
    words = prose(50, 100).split()
    tweaked = list(words)
    tweaked[-10] = "tweak"
    res = await svc.submit_bulk(
        d.id,
        alice,
        [
            {"text": " ".join(words)},
            {"text": " ".join(tweaked)},
            {"prompt": "Summarise the notes.", "completion": " ".join(words)},
            {"prompt": "Summarise the notes!", "completion": " ".join(words)},
        ],
    )
    assert [r.status for r in res] == ["accepted", "flagged", "flagged", "flagged"]
    assert {r.near_duplicate_of for r in res[1:]} == {res[0].record_id}
    # a pair differing only in case and spacing is an exact duplicate, not a near one
    with pytest.raises(DuplicateRecord) as e:
        await svc.submit(
            d.id, alice, {"prompt": "SUMMARISE  the notes.", "completion": " ".join(words)}
        )
    assert e.value.result.duplicate_of == res[2].record_id


async def test_curator_decision_in_another_process_reaches_the_index(
    engine: AsyncEngine,
) -> None:
    owner, alice, bob = await accounts(engine, "owner", "alice", "bob")
    one, two = DatanetService(engine), DatanetService(engine)
    d = await one.create_datanet("dn", owner, "MIT", "curated")
    x = await one.submit(d.id, alice, {"text": prose(60, 100)})
    assert x.status == "pending" and x.record_id is not None
    words = prose(60, 100).split()
    words[5] = "variant"
    # process two rejects x; process one (whose index holds x) must no longer flag copies
    await two.decide(x.record_id, owner, False, "not ours")
    r = await one.submit(d.id, bob, {"text": " ".join(words)})
    assert r.status == "pending" and r.near_duplicate_of is None
    # and a flagged record approved elsewhere becomes an original for near duplicates
    words2 = list(words)
    words2[70] = "variant2"
    f = await two.submit(d.id, alice, {"text": " ".join(words2)})
    assert f.status == "flagged" and f.near_duplicate_of == r.record_id
    assert r.record_id is not None and f.record_id is not None
    await one.decide(r.record_id, owner, False, "spam")
    await one.decide(f.record_id, owner, True, "the better version")
    words3 = list(words2)
    words3[90] = "variant3"
    g = await two.submit(d.id, bob, {"text": " ".join(words3)})
    assert g.status == "flagged" and g.near_duplicate_of == f.record_id
