"""Gaming the deduplication against a real PostgreSQL (issue 13, items 6 and 9).

An evaded copy (invisible characters, compatibility forms, homoglyphs, marks) is rejected or
flagged exactly like the plain copy; records ingested under content hash version 1 are
brought to version 2 by `rehash_datanet`, which rejects and flags the copies they hid;
text the database cannot store is a per-record `invalid_text` that never stops a bulk
upload; no curator decides their own record; datanet fields are checked before the
database sees them."""

from __future__ import annotations

import hashlib
import random
import unicodedata

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution import dedup, store
from attribution.errors import BulkRejected, DuplicateRecord, Forbidden, Invalid, RecordRejected
from attribution.records import QualityPolicy
from attribution.service import DatanetService
from attribution.snapshots import verify_inclusion

pytestmark = pytest.mark.integration

NEW_ACCOUNT = text("INSERT INTO accounts (name) VALUES (:name) RETURNING id")
VOCAB = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "nrstvxlm"]
HOMOGLYPHS = str.maketrans("aceopx", "асеорх")

EVASIONS = {
    "zwsp": lambda s: " ".join(w + "\u200b" for w in s.split()),
    "zwj-zwnj": lambda s: " ".join(w[:2] + "\u200d" + w[2:] + "\u200c" for w in s.split()),
    "soft-hyphen": lambda s: " ".join(w + "\u00ad" for w in s.split()),
    "word-joiner": lambda s: " ".join(w + "\u2060" for w in s.split()),
    "bom": lambda s: "\ufeff" + " ".join(w + "\ufeff" for w in s.split()),
    "fullwidth": lambda s: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s),
    "math-bold": lambda s: "".join(chr(0x1D41A + ord(c) - 97) if "a" <= c <= "z" else c for c in s),
    "combining": lambda s: "".join(c + "\u0336" if c.isalpha() else c for c in s),
    "tags": lambda s: " ".join(w + "\U000e0020\U000e007f" for w in s.split()),
    "nbsp": lambda s: s.replace(" ", "\u00a0"),
    "homoglyphs": lambda s: s.translate(HOMOGLYPHS),
}


def prose(seed: int, n: int = 80) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n)) + "."


async def accounts(engine: AsyncEngine, *names: str) -> list[int]:
    async with engine.begin() as conn:
        return [(await conn.execute(NEW_ACCOUNT, {"name": n})).scalar_one() for n in names]


@pytest.fixture
async def svc(engine: AsyncEngine) -> DatanetService:
    return DatanetService(engine)


async def test_every_evaded_copy_is_a_duplicate_and_an_edited_one_is_flagged(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, alice, mallory = await accounts(engine, "owner", "alice", "mallory")
    d = await svc.create_datanet("dn", owner, "MIT")
    for seed, (name, evade) in enumerate(EVASIONS.items()):
        original = await svc.submit(d.id, alice, {"text": prose(seed)})
        assert original.status == "accepted"
        # the plain copy and the evaded copy get the same answer
        with pytest.raises(DuplicateRecord) as plain:
            await svc.submit(d.id, mallory, {"text": prose(seed)})
        with pytest.raises(DuplicateRecord) as evaded:
            await svc.submit(d.id, mallory, {"text": evade(prose(seed))})
        assert evaded.value.result.duplicate_of == original.record_id, name
        assert evaded.value.result.content_hash == plain.value.result.content_hash
        # one word changed: the evaded copy is flagged as a near duplicate, like the plain
        words = prose(seed).split()
        words[40] = "changed"
        near = await svc.submit(d.id, mallory, {"text": evade(" ".join(words))})
        assert near.status == "flagged", (name, near)
        assert near.near_duplicate_of == original.record_id
        # as a prompt/completion pair too
        q, a = "Why is it so?", prose(seed + 100)
        pair = await svc.submit(d.id, alice, {"prompt": q, "completion": a})
        with pytest.raises(DuplicateRecord):
            await svc.submit(d.id, mallory, {"prompt": evade(q), "completion": evade(a)})
        assert pair.record_id is not None
    snap = await svc.publish(d.id)
    contributors = await svc.snapshot_contributors(snap.id)
    assert contributors == {alice: 2 * len(EVASIONS)}  # mallory earns nothing


async def test_nul_is_a_per_record_answer_that_never_stops_a_bulk_upload(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, alice = await accounts(engine, "owner", "alice")
    d = await svc.create_datanet("dn", owner, "MIT")
    lines = [
        b'{"text": "' + prose(1).encode() + b'"}',
        b'{"text": "nul \\u0000 ' + prose(2).encode() + b'"}',
        b'{"text": "' + prose(3).encode() + b'", "metadata": {"src": "a\\u0000b"}}',
        b'{"prompt": "q\\u0000", "completion": "' + prose(4).encode() + b'"}',
        b'{"text": "lone \\ud800 surrogate ' + prose(5).encode() + b'"}',
        b'{"text": "' + prose(6).encode() + b'", "metadata": {"n": 1e999}}',
        b'{"text": "'
        + prose(7).encode()
        + b'", "metadata": {"n": 123456789012345678901234567890}}',
        b'{"text": "' + prose(8).encode() + b'"}',
    ]
    results = await svc.submit_bulk(d.id, alice, lines)
    got = [(r.status, r.reason) for r in results]
    assert got == [
        ("accepted", None),
        ("rejected", "invalid_text"),
        ("rejected", "invalid_text"),
        ("rejected", "invalid_text"),
        ("rejected", "invalid_text"),
        ("rejected", "invalid_schema"),
        ("accepted", None),
        ("accepted", None),
    ]
    assert [r.record_id is None for r in results] == [
        False,
        True,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    # atomic: nothing written, every line answered
    with pytest.raises(BulkRejected) as e:
        await svc.submit_bulk(
            d.id, alice, [b'{"text": "' + prose(9).encode() + b'"}', lines[1]], atomic=True
        )
    assert [r.reason for r in e.value.results] == [None, "invalid_text"]
    with pytest.raises(RecordRejected) as one:
        await svc.submit(d.id, alice, lines[1])
    assert isinstance(one.value, Invalid) and one.value.result.reason == "invalid_text"
    assert len(await svc.records_of(alice, alice)) == 3


async def test_no_curator_decides_their_own_record(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, cur, alice = await accounts(engine, "owner", "cur", "alice")
    d = await svc.create_datanet("dn", owner, "MIT", "curated", curators=[cur])
    own = await svc.submit(d.id, cur, {"text": prose(1)})
    owners = await svc.submit(d.id, owner, {"text": prose(2)})
    theirs = await svc.submit(d.id, alice, {"text": prose(3)})
    assert own.record_id and owners.record_id and theirs.record_id
    for rid, who in ((own.record_id, cur), (owners.record_id, owner)):
        for approve in (True, False):
            with pytest.raises(Forbidden) as e:
                await svc.decide(rid, who, approve, "mine is good")
            assert isinstance(e.value, Forbidden) and "own" in str(e.value)
            # an admin acting under their own account is no exception
            with pytest.raises(Forbidden):
                await svc.decide(rid, who, approve, "mine is good", trusted=True)
    assert (await svc.get_record(own.record_id, cur)).status == "pending"
    # another curator decides it
    assert (await svc.decide(own.record_id, owner, True, "checked")).to_status == "accepted"
    assert (await svc.decide(owners.record_id, cur, True, "checked")).to_status == "accepted"
    assert (await svc.decide(theirs.record_id, cur, True, "checked")).to_status == "accepted"
    for bad in ("a\x00b", "x" * 2001):
        with pytest.raises(Invalid):
            await svc.decide(theirs.record_id, cur, True, bad)


async def test_datanet_fields_are_checked_before_the_database(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    (owner,) = await accounts(engine, "owner")
    bad_calls = [
        {"licence": "MIT\x00"},
        {"licence": "M" * 201},
        {"description": "about \x00"},
        {"description": "d" * 10_001},
        {"curators": [2**63]},
        {"curators": [0]},
        {"policy": QualityPolicy(max_records_per_minute=2**70)},
        {"policy": QualityPolicy(max_bytes=0)},
        {"policy": QualityPolicy(near_duplicate_threshold=0.0)},
        {"policy": QualityPolicy(near_duplicate_threshold=float("nan"))},
        {"policy": QualityPolicy(min_distinct_token_ratio=1.5)},
        {"policy": QualityPolicy(min_char_entropy_bits=float("inf"))},
    ]
    for kw in bad_calls:
        args = {"licence": "MIT", **kw}
        with pytest.raises(Invalid):
            await svc.create_datanet("dn", owner, **args)  # type: ignore[arg-type]
    with pytest.raises(Invalid):
        await svc.create_datanet("dn\n", owner, "MIT")
    d = await svc.create_datanet("dn", owner, "MIT", description="ok ü")
    with pytest.raises(Invalid):
        await svc.add_curators(d.id, [2**63], None)


# --- records ingested under content hash version 1 -------------------------------------------
def v1_normalise(s: str) -> str:
    s = unicodedata.normalize("NFC", s)
    return " ".join(unicodedata.normalize("NFC", s.casefold()).split())


async def insert_v1(engine: AsyncEngine, datanet_id: int, who: int, content: str) -> int:
    """A text record as ingestion before version 2 stored it (hash and signature of the
    version-1 form), accepted."""
    norm = v1_normalise(content)
    h = hashlib.sha256(b"text\x00" + norm.encode()).digest()
    sig = dedup.to_bytes(dedup.signatures([norm])[0])
    async with engine.begin() as conn:
        rid = (await conn.execute(text("SELECT nextval('contributions_id_seq')"))).scalar_one()
        row = store.NewRow(
            rid, "text", content, None, None, None, h, sig, len(content.split()), "accepted"
        )
        await conn.execute(store.INSERT_CONTRIBUTIONS, store.insert_params(datanet_id, who, [row]))
        await conn.execute(
            text("UPDATE datanets SET last_record_id = :r WHERE id = :d"),
            {"r": rid, "d": datanet_id},
        )
    return int(rid)


async def test_rehash_brings_version_1_records_up_and_catches_what_they_hid(
    svc: DatanetService, engine: AsyncEngine
) -> None:
    owner, alice, mallory, cur = await accounts(engine, "owner", "alice", "mallory", "cur")
    d = await svc.create_datanet("dn", owner, "MIT", curators=[cur])
    plain = await insert_v1(engine, d.id, alice, prose(1))
    accented = await insert_v1(engine, d.id, alice, "Café " + prose(2))
    # copies that version 1 let through
    zwsp_copy = await insert_v1(engine, d.id, mallory, EVASIONS["zwsp"](prose(1)))
    words = prose(3).split()
    original3 = await insert_v1(engine, d.id, alice, " ".join(words))
    words[30] = "changed"
    near_copy = await insert_v1(engine, d.id, mallory, EVASIONS["fullwidth"](" ".join(words)))
    untouched = await insert_v1(engine, d.id, mallory, prose(4))
    old_snap = await svc.publish(d.id)
    old_proof = await svc.inclusion_proof(old_snap.id, zwsp_copy)

    # before the rehash, a copy of the accented record misses its version-1 hash: only
    # flagged as a near duplicate, where it should be rejected as an exact one
    gap = await svc.submit(d.id, mallory, {"text": "CAFE " + prose(2)})
    assert (gap.status, gap.near_duplicate_of) == ("flagged", accented)

    report = await svc.rehash(d.id)
    assert report.content_hash_version == 2 and report.records == 7
    assert report.rejected_duplicates == [zwsp_copy, gap.record_id]
    assert report.flagged_near_duplicates == [near_copy]
    assert report.rehashed == 2  # the accented record and the fullwidth copy
    rec = await svc.get_record(gap.record_id, None)  # type: ignore[arg-type]
    assert (rec.status, rec.duplicate_of) == ("rejected", accented)
    rec = await svc.get_record(zwsp_copy, None)
    assert (rec.status, rec.reason, rec.duplicate_of) == ("rejected", "duplicate", plain)
    rec = await svc.get_record(near_copy, None)
    assert (rec.status, rec.near_duplicate_of) == ("flagged", original3)
    assert (await svc.get_record(untouched, None)).status == "accepted"

    # now an evaded copy of the accented record is a duplicate, in this and another process
    for s in (svc, DatanetService(engine)):
        with pytest.raises(DuplicateRecord) as e:
            await s.submit(d.id, mallory, {"text": EVASIONS["zwsp"]("CAFE " + prose(2))})
        assert e.value.result.duplicate_of == accented
    # idempotent
    again = await svc.rehash(d.id)
    assert (again.rehashed, again.rejected_duplicates, again.flagged_near_duplicates) == (0, [], [])
    # the published snapshot and its proofs are untouched; the next one leaves the copies out
    assert verify_inclusion(
        bytes.fromhex(old_proof.record_hash), old_proof.proof, bytes.fromhex(old_snap.root)
    )
    assert (await svc.inclusion_proof(old_snap.id, zwsp_copy)).root == old_snap.root
    new_snap = await svc.publish(d.id)
    ids = [rid for rid, _ in await svc.snapshot_records(new_snap.id)]
    assert ids == [plain, accented, original3, untouched]
