"""Bring stored content hashes and MinHash signatures up to the current normalisation
(content hash version `textnorm.CONTENT_HASH_VERSION`).

Records ingested under content hash version 1 (NFC + casefold + whitespace) keep that hash
and the signature of that form. For most text the two versions agree byte for byte (all
ASCII text without control characters), but where they differ -- accents, fullwidth or
"mathematical" letters, invisible characters, homoglyphs -- a copy submitted now would not
meet the stored original, and copies that evaded version 1 are still live. `rehash_datanet`
fixes both, one datanet at a time, in one transaction holding the datanet's row lock (its
submissions and decisions wait meanwhile):

1. Every live record (accepted, pending, flagged) is read in id order with its content, and
   its current hash and signature are computed.
2. Exact duplicates under the new hash: of two live records with equal hashes the later one
   is rejected as a duplicate of the earlier (`duplicate`, `duplicate_of`), whatever its
   status or any curator's decision -- an exact copy is never credited twice. Its content is
   kept (ingestion stores none for a duplicate; a migration does not delete data).
3. Near duplicates: an accepted or pending record is flagged (`near_duplicate`) when the
   near-duplicate index of the records before it (rebuilt in id order, as ingestion builds
   it) finds one at or above the datanet's threshold, and either its own signature or that
   of the record it resembles changed -- a copy that only the old normalisation hid. A record
   a curator has decided (`decided_at` set) keeps its status: approving a near duplicate is
   a curator's call.
4. Hashes and signatures that changed are written (through a temporary hash, so that no two
   live rows ever hold the same hash, in whatever order the rows are updated), and the
   datanet's `index_epoch` is bumped, so every process rebuilds its near-duplicate index.

Idempotent: a second run finds nothing to change. Published snapshots are append-only and
keep the record hashes they were published with, so their roots and every inclusion proof
stay valid; the next snapshot takes the new hashes. Run it once per deployment after
upgrading (`rehash_all`); until then a copy of a record whose two hashes differ can slip in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attribution import dedup
from attribution.access import fetch_datanet
from attribution.errors import NotFound
from attribution.records import Record, content_hash, normalise
from attribution.textnorm import CONTENT_HASH_VERSION

_LOCK = text("SELECT id FROM datanets WHERE id = :id FOR NO KEY UPDATE")
_DATANET_IDS = text("SELECT id FROM datanets ORDER BY id")
_LIVE_RECORDS = text(
    """
    SELECT id, kind, text, prompt, completion, content_hash, minhash, status,
           decided_at IS NOT NULL AS decided
    FROM contributions
    WHERE datanet_id = :datanet_id AND status IN ('accepted', 'pending', 'flagged')
    ORDER BY id
    """
)
_REJECT_DUPLICATE = text(
    """
    UPDATE contributions
    SET status = 'rejected', reason = 'duplicate', detail = u.detail, duplicate_of = u.first,
        content_hash = u.h
    FROM unnest(CAST(:ids AS bigint[]), CAST(:firsts AS bigint[]), CAST(:hashes AS bytea[]),
                CAST(:details AS text[])) AS u(id, first, h, detail)
    WHERE contributions.id = u.id
    """
)
_FLAG_NEAR = text(
    """
    UPDATE contributions
    SET status = 'flagged', reason = 'near_duplicate', detail = u.detail,
        near_duplicate_of = u.near
    FROM unnest(CAST(:ids AS bigint[]), CAST(:nears AS bigint[]), CAST(:details AS text[]))
        AS u(id, near, detail)
    WHERE contributions.id = u.id
    """
)
_SET_HASHES = text(
    """
    UPDATE contributions SET content_hash = u.h, minhash = coalesce(u.mh, contributions.minhash)
    FROM unnest(CAST(:ids AS bigint[]), CAST(:hashes AS bytea[]), CAST(:minhashes AS bytea[]))
        AS u(id, h, mh)
    WHERE contributions.id = u.id
    """
)
_BUMP_EPOCH = text("UPDATE datanets SET index_epoch = index_epoch + 1 WHERE id = :id")
_PART = 5000
"""Live records read per round trip."""


class RehashReport(msgspec.Struct):
    datanet_id: int
    content_hash_version: int
    records: int
    """Live records examined."""
    rehashed: int
    """Records whose hash or signature changed."""
    rejected_duplicates: list[int]
    """Ids of records rejected as exact duplicates of an earlier live record."""
    flagged_near_duplicates: list[int]
    """Ids of records flagged as near duplicates."""


def _record(row: Any) -> Record:
    if row.kind == "text":
        return Record(text=row.text or "")
    return Record(prompt=row.prompt or "", completion=row.completion or "")


def _normalised(rec: Record) -> str:
    """The text the signature is computed over (ingestion's: prompt and completion joined)."""
    if rec.text is not None:
        return normalise(rec.text)
    return normalise(f"{rec.prompt} {rec.completion}")


def _temporary_hash(record_id: int) -> bytes:
    return hashlib.sha256(b"royalty.rehash.tmp\x00" + record_id.to_bytes(8, "big")).digest()


async def rehash_datanet(engine: AsyncEngine, datanet_id: int) -> RehashReport:
    """Bring one datanet's live records to the current content hash (module docstring)."""
    async with engine.begin() as conn:
        if (await conn.execute(_LOCK, {"id": datanet_id})).first() is None:
            raise NotFound(f"no datanet {datanet_id}")
        policy = (await fetch_datanet(conn, datanet_id)).policy
        return await _rehash_locked(conn, datanet_id, policy.near_duplicate_threshold)


async def rehash_all(engine: AsyncEngine) -> list[RehashReport]:
    """`rehash_datanet` for every datanet, one transaction each."""
    async with engine.connect() as conn:
        ids = [r.id for r in (await conn.execute(_DATANET_IDS)).all()]
    return [await rehash_datanet(engine, d) for d in ids]


async def _rehash_locked(conn: AsyncConnection, datanet_id: int, threshold: float) -> RehashReport:
    index = dedup.NearDupIndex(threshold)
    first_of: dict[bytes, int] = {}  # new hash -> the live record holding it
    changed: set[int] = set()
    rejected: list[tuple[int, int, bytes]] = []
    flagged: list[tuple[int, int, float]] = []
    new_hashes: list[tuple[int, bytes, bytes | None]] = []
    examined = 0
    result = await conn.stream(_LIVE_RECORDS, {"datanet_id": datanet_id})
    async for part in result.partitions(_PART):
        examined += len(part)
        recs = [_record(r) for r in part]
        hashes = [content_hash(rec) for rec in recs]
        stale = [i for i, r in enumerate(part) if bytes(r.content_hash) != hashes[i]]
        fresh = dedup.signatures([_normalised(recs[i]) for i in stale])
        sig_of = {i: fresh[k] for k, i in enumerate(stale)}
        for i, row in enumerate(part):
            h = hashes[i]
            first = first_of.get(h)
            if first is not None:
                rejected.append((row.id, first, h))
                continue
            first_of[h] = row.id
            stored = None if row.minhash is None else dedup.values_from_bytes(bytes(row.minhash))
            sig = sig_of.get(i, stored)
            if i in sig_of:
                changed.add(row.id)
                new_hashes.append((row.id, h, dedup.to_bytes(sig_of[i])))
            if sig is None or row.status == "flagged":
                continue  # flagged records are not indexed (ingestion's rule)
            near = index.query(sig)
            if near is not None and not row.decided and (row.id in changed or near[0] in changed):
                flagged.append((row.id, near[0], near[1]))
                continue
            index.insert(row.id, np.asarray(sig, dtype=np.uint32))
    await _write(conn, datanet_id, rejected, flagged, new_hashes)
    return RehashReport(
        datanet_id=datanet_id,
        content_hash_version=CONTENT_HASH_VERSION,
        records=examined,
        rehashed=len(new_hashes),
        rejected_duplicates=[r[0] for r in rejected],
        flagged_near_duplicates=[f[0] for f in flagged],
    )


async def _write(
    conn: AsyncConnection,
    datanet_id: int,
    rejected: Sequence[tuple[int, int, bytes]],
    flagged: Sequence[tuple[int, int, float]],
    new_hashes: Sequence[tuple[int, bytes, bytes | None]],
) -> None:
    if not (rejected or flagged or new_hashes):
        return
    note = f"(content hash v{CONTENT_HASH_VERSION} re-check)"
    if rejected:
        # first out of the live set, so their hashes never meet a survivor's
        await conn.execute(
            _REJECT_DUPLICATE,
            {
                "ids": [r[0] for r in rejected],
                "firsts": [r[1] for r in rejected],
                "hashes": [r[2] for r in rejected],
                "details": [f"same normalised content as record {r[1]} {note}" for r in rejected],
            },
        )
    if flagged:
        await conn.execute(
            _FLAG_NEAR,
            {
                "ids": [f[0] for f in flagged],
                "nears": [f[1] for f in flagged],
                "details": [
                    f"near duplicate of record {f[1]} (similarity {f[2]:.2f}) {note}"
                    for f in flagged
                ],
            },
        )
    if new_hashes:
        # a survivor's new hash may equal another survivor's old one (row by row, a unique
        # index is checked at once): every changed row goes through a hash of its own first
        ids = [n[0] for n in new_hashes]
        await conn.execute(
            _SET_HASHES,
            {
                "ids": ids,
                "hashes": [_temporary_hash(i) for i in ids],
                "minhashes": [None] * len(ids),
            },
        )
        await conn.execute(
            _SET_HASHES,
            {
                "ids": ids,
                "hashes": [n[1] for n in new_hashes],
                "minhashes": [n[2] for n in new_hashes],
            },
        )
    await conn.execute(_BUMP_EPOCH, {"id": datanet_id})
