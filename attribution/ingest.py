"""Record submission: validation, duplicate checks and insertion, single and bulk.

Submission pipeline (single and bulk share it): decode and validate (UTF-8, schema, size),
normalise, hash, quality rules, MinHash signatures and LSH band keys (all outside any
transaction, a chunk of records at a time with numpy); then, in one transaction holding the
datanet's row lock: rate limit, exact duplicates (against the datanet and earlier records of
the same call), near duplicates (LSH), insert (COPY). Rows are written for every record that
passed validation, rejected ones without their content (so junk is visible and counts toward
the rate limit); records that fail validation or are rate limited leave no row.

A large call is cut into chunks of `CHUNK` records and pipelined inside its one transaction:
one round trip looks up chunk k+1 (which of its hashes are live, ids for its rows), then
while Postgres writes chunk k (COPY), this process decides chunk k+1 and prepares chunk k+2,
so the two cores work at once. Chunks are decided strictly in order, so the answers are
exactly those of one record after another (tests/integration/test_ingest_pg.py).

Single `submit` raises for a rejected record (`DuplicateRecord` -> 409, `RecordRejected` ->
400/413, `RateLimited` -> 429) after committing its row; `submit_bulk` answers per record,
and with `atomic=True` writes nothing unless every record is accepted, pending or flagged
(`BulkRejected` carries the per-record answers).

The near-duplicate index of a datanet lives in this process, is built from the stored
signatures on first use and caught up under the datanet's row lock: the datanet row carries
the id of its newest record (`last_record_id`, so catching up costs nothing when no other
process wrote) and an `index_epoch` that curator decisions changing index membership bump
(another process then rebuilds its index). A restart or a second replica loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attribution import dedup, store
from attribution.access import fetch_datanet
from attribution.datanets import Datanet
from attribution.dedup import NearDupIndex
from attribution.errors import BulkRejected, Conflict, NotFound, RecordRejected
from attribution.records import (
    NO_ROW_REASONS,
    Prepared,
    QualityPolicy,
    Record,
    RejectReason,
    SubmissionResult,
    prepare_many,
)

RawRecord = bytes | str | dict[str, Any] | Record
RATE_WINDOW_S = 60.0
CHUNK = 500
"""Records per pipeline stage of a large call."""
_PREPARE_STEP = 250
"""Records prepared between yields to the event loop while a chunk's write is in flight."""
_INSERT_MAX = 64
"""Up to this many rows are written with INSERT, more with COPY."""
_LOAD_CHUNK = 20_000
"""Signatures read per round trip while building a datanet's index."""


class _Item(msgspec.Struct, gc=False):
    index: int
    prepared: Prepared | None = None
    rejection: SubmissionResult | None = None
    kind: str | None = None
    sig_row: int = -1
    """Row of this item's signature in its chunk's signature array (prepared items)."""


class _Chunk(msgspec.Struct):
    """Up to `CHUNK` records, prepared outside the transaction."""

    items: list[_Item]
    sigs: np.ndarray
    keys: list[list[int]]
    sig_bytes: bytes
    hashes: list[bytes]
    n_rows: int
    """Items that get a row unless rate limited: a prepared record or a quality rejection."""


class _Lookup(msgspec.Struct):
    live: dict[bytes, int]
    ids: list[int]


class NearDupIndexes:
    """This process's near-duplicate index of each datanet. Ingestion builds and extends
    them; curation (`attribution.curation`) keeps them in step with its decisions, which is
    why they live apart from `Ingestion`."""

    def __init__(self) -> None:
        self._by_datanet: dict[int, NearDupIndex] = {}

    def get(self, datanet_id: int) -> NearDupIndex | None:
        return self._by_datanet.get(datanet_id)

    def forget(self, datanet_id: int) -> None:
        """Drop the datanet's index; the next submission rebuilds it from the database."""
        self._by_datanet.pop(datanet_id, None)

    async def load(
        self,
        conn: AsyncConnection,
        datanet_id: int,
        policy: QualityPolicy,
        last_record_id: int,
        epoch: int,
    ) -> NearDupIndex:
        """The datanet's near-duplicate index, built or caught up from the database. Call
        with the datanet's row lock held (which read `last_record_id` and `epoch`)."""
        index = self._by_datanet.get(datanet_id)
        if index is None or index.epoch != epoch:
            index = NearDupIndex(policy.near_duplicate_threshold)
            index.epoch = epoch
            self._by_datanet[datanet_id] = index
        if last_record_id > index.watermark:
            result = await conn.stream(
                store.LOAD_SIGNATURES, {"datanet_id": datanet_id, "after": index.watermark}
            )
            async for part in result.partitions(_LOAD_CHUNK):
                ids = [r[0] for r in part]
                sigs = np.frombuffer(b"".join([r[1] for r in part]), dtype="<u4")
                index.insert_many(ids, sigs.astype(np.uint32).reshape(len(ids), dedup.NUM_PERM))
            index.watermark = last_record_id
        return index


class _State:
    """What deciding one chunk leaves for the next, within one call."""

    def __init__(self, index: NearDupIndex, remaining: int | None) -> None:
        self.index = index
        self.remaining = remaining
        """Records the contributor may still submit this minute (None: no limit)."""
        self.live: dict[bytes, int] = {}
        """Content hash -> id of the live record holding it, for the hashes seen so far."""
        self.added: list[int] = []
        """Records this call put in the near-duplicate index (undone if it rolls back)."""
        self.last_id = 0


class Ingestion:
    """The submission pipeline; `DatanetService.submit` and `submit_bulk` call `ingest`."""

    def __init__(self, engine: AsyncEngine, indexes: NearDupIndexes) -> None:
        self.engine = engine
        self.indexes = indexes
        # What ingestion needs of a datanet (policy, mode) never changes once created.
        self._ingest_datanets: dict[int, Datanet] = {}

    async def ingest(
        self,
        datanet_id: int,
        contributor: int,
        raws: Sequence[RawRecord],
        atomic: bool,
        rate_limit: bool,
    ) -> list[SubmissionResult]:
        datanet = self._ingest_datanets.get(datanet_id)
        if datanet is None:
            async with self.engine.connect() as conn:
                datanet = await fetch_datanet(conn, datanet_id)
            self._ingest_datanets[datanet_id] = datanet
        policy = datanet.policy
        parts = [raws[s : s + CHUNK] for s in range(0, len(raws), CHUNK)] or [raws]
        # the first chunk (and the second) are prepared before the lock is taken
        chunk = _prepare_chunk(parts[0], 0, policy)
        upcoming = _prepare_chunk(parts[1], CHUNK, policy) if len(parts) > 1 else None
        state: _State | None = None
        results: list[SubmissionResult] = []
        try:
            async with self.engine.begin() as conn:
                lock = (
                    await conn.execute(store.LOCK_DATANET_FOR_INGEST, {"id": datanet_id})
                ).first()
                if lock is None:
                    raise NotFound(f"no datanet {datanet_id}")
                index = await self.indexes.load(
                    conn, datanet_id, policy, lock.last_record_id, lock.index_epoch
                )
                state = _State(index, await self._remaining(conn, datanet, contributor, rate_limit))
                driver = await _driver(conn)
                decided = self._decide(
                    datanet, chunk, await _lookup(conn, datanet_id, chunk), state
                )
                failed = False
                for k in range(len(parts)):
                    chunk_results, rows = decided
                    results.extend(chunk_results)
                    # an atomic call that failed goes on deciding (every line gets its
                    # answer) and writes nothing more; the transaction rolls back
                    failed = failed or (
                        atomic and any(r.status == "rejected" for r in chunk_results)
                    )
                    if upcoming is None:
                        if not failed:
                            await _write(conn, driver, datanet_id, contributor, rows)
                        break
                    # Pipeline: look up chunk k+1 (its hashes, ids), then while Postgres
                    # writes chunk k, decide chunk k+1 and prepare chunk k+2. Deciding k+1
                    # before k is written is sound: this call's own hashes are in
                    # state.live, the index and the rate count are in memory.
                    lookup = await _lookup(conn, datanet_id, upcoming)
                    write = asyncio.ensure_future(
                        _write(conn, driver, datanet_id, contributor, [] if failed else rows)
                    )
                    try:
                        await asyncio.sleep(0)  # the write starts streaming
                        decided = self._decide(datanet, upcoming, lookup, state)
                        upcoming = (
                            await _prepare_chunk_yielding(parts[k + 2], (k + 2) * CHUNK, policy)
                            if k + 2 < len(parts)
                            else None
                        )
                    finally:
                        await write
                if failed:
                    raise BulkRejected(results)
                if state.last_id:
                    await conn.execute(
                        store.SET_LAST_RECORD, {"id": datanet_id, "last_record_id": state.last_id}
                    )
                    index.watermark = max(index.watermark, state.last_id)
        except BulkRejected:
            if state is not None:
                for rid in state.added:
                    state.index.remove(rid)
            raise
        except (IntegrityError, asyncpg.IntegrityConstraintViolationError) as e:
            self.indexes.forget(datanet_id)
            code = store.sqlstate(e) if isinstance(e, IntegrityError) else e.sqlstate
            if code == "23503":
                raise NotFound("the contributor account does not exist") from None
            if code == "23505":
                raise Conflict("a concurrent submission stored the same content") from None
            raise
        except BaseException:
            self.indexes.forget(datanet_id)
            raise
        return results

    @staticmethod
    async def _remaining(
        conn: AsyncConnection, datanet: Datanet, contributor: int, rate_limit: bool
    ) -> int | None:
        """How many more records the contributor may submit this minute (None: no limit)."""
        limit = datanet.policy.max_records_per_minute
        if not rate_limit or not limit:
            return None
        recent = (
            await conn.execute(
                store.COUNT_RECENT,
                {
                    "datanet_id": datanet.id,
                    "contributor": contributor,
                    "window_s": RATE_WINDOW_S,
                    "cap": limit,
                },
            )
        ).scalar_one()
        return max(0, limit - recent)

    @staticmethod
    def _decide(
        datanet: Datanet, chunk: _Chunk, lookup: _Lookup, state: _State
    ) -> tuple[list[SubmissionResult], list[store.NewRow]]:
        """Rate limit, exact and near duplicates for one chunk, in order; the rows to write."""
        policy = datanet.policy
        for h, rid in lookup.live.items():
            state.live.setdefault(h, rid)
        live = state.live
        index = state.index
        sigs, keys, sig_bytes = chunk.sigs, chunk.keys, chunk.sig_bytes
        next_id = iter(lookup.ids)
        live_status = "pending" if datanet.acceptance_mode == "curated" else "accepted"
        results: list[SubmissionResult] = []
        rows: list[store.NewRow] = []
        for it in chunk.items:
            rej = it.rejection
            if rej is not None and rej.reason in NO_ROW_REASONS:
                results.append(rej)
                continue
            if state.remaining is not None:
                if state.remaining <= 0:
                    results.append(
                        SubmissionResult(
                            index=it.index,
                            status="rejected",
                            reason=RejectReason.RATE_LIMITED.value,
                            detail=f"more than {policy.max_records_per_minute} records a "
                            "minute to this datanet",
                        )
                    )
                    continue
                state.remaining -= 1
            rid = next(next_id)
            state.last_id = max(state.last_id, rid)
            if rej is not None:  # a quality rule fired; keep the fact, not the content
                assert rej.content_hash is not None
                rej.record_id = rid
                rows.append(
                    store.NewRow(
                        rid,
                        it.kind or "text",
                        None,
                        None,
                        None,
                        None,
                        bytes.fromhex(rej.content_hash),
                        None,
                        0,
                        "rejected",
                        rej.reason,
                        rej.detail,
                    )
                )
                results.append(rej)
                continue
            p = it.prepared
            assert p is not None
            row = it.sig_row
            rec = p.record
            h_hex = p.content_hash.hex()
            first = live.get(p.content_hash)
            if first is not None:
                detail = f"same normalised content as record {first}"
                rows.append(
                    store.NewRow(
                        rid,
                        rec.kind,
                        None,
                        None,
                        None,
                        None,
                        p.content_hash,
                        None,
                        0,
                        "rejected",
                        RejectReason.DUPLICATE.value,
                        detail,
                        duplicate_of=first,
                    )
                )
                results.append(
                    SubmissionResult(
                        index=it.index,
                        status="rejected",
                        record_id=rid,
                        reason=RejectReason.DUPLICATE.value,
                        detail=detail,
                        duplicate_of=first,
                        content_hash=h_hex,
                    )
                )
                continue
            live[p.content_hash] = rid
            near = index.query_keys(sigs[row], keys[row])
            status = live_status if near is None else "flagged"
            reason = detail_ = None
            near_id: int | None = None
            if near is not None:
                near_id = near[0]
                reason = RejectReason.NEAR_DUPLICATE.value
                detail_ = f"near duplicate of record {near_id} (similarity {near[1]:.2f})"
            else:
                index.insert_keys(rid, sigs[row], keys[row])
                state.added.append(rid)
            rows.append(
                store.NewRow(
                    rid,
                    rec.kind,
                    rec.text,
                    rec.prompt,
                    rec.completion,
                    msgspec.json.encode(rec.metadata).decode()
                    if rec.metadata is not None
                    else None,
                    p.content_hash,
                    sig_bytes[row * dedup.SIGNATURE_BYTES : (row + 1) * dedup.SIGNATURE_BYTES],
                    p.token_count,
                    status,
                    reason,
                    detail_,
                    near_duplicate_of=near_id,
                )
            )
            results.append(
                SubmissionResult(
                    index=it.index,
                    status=status,  # type: ignore[arg-type]
                    record_id=rid,
                    reason=reason,
                    detail=detail_,
                    near_duplicate_of=near_id,
                    content_hash=h_hex,
                )
            )
        return results, rows


def _prepare_chunk(raws: Sequence[RawRecord], first_index: int, policy: QualityPolicy) -> _Chunk:
    """Validate, normalise, hash and quality-check records; signatures and band keys."""
    items: list[_Item] = []
    prepared: list[Prepared] = []
    n_rows = 0
    for i, out in enumerate(prepare_many(raws, policy, first_index)):
        if isinstance(out, RecordRejected):
            items.append(_Item(first_index + i, rejection=out.result, kind=out.kind))
            if out.result.reason not in NO_ROW_REASONS:
                n_rows += 1
        else:
            items.append(_Item(first_index + i, prepared=out, sig_row=len(prepared)))
            prepared.append(out)
            n_rows += 1
    sigs = dedup.signatures([p.normalised for p in prepared])
    return _Chunk(
        items=items,
        sigs=sigs,
        keys=dedup.band_keys(sigs, policy.near_duplicate_threshold),
        sig_bytes=sigs.astype("<u4", copy=False).tobytes(),
        hashes=list({p.content_hash: None for p in prepared}),
        n_rows=n_rows,
    )


async def _prepare_chunk_yielding(
    raws: Sequence[RawRecord], first_index: int, policy: QualityPolicy
) -> _Chunk:
    """`_prepare_chunk` that lets the event loop run every `_PREPARE_STEP` records, so the
    write in flight keeps streaming to Postgres meanwhile."""
    parts: list[_Chunk] = []
    for s in range(0, len(raws), _PREPARE_STEP):
        parts.append(_prepare_chunk(raws[s : s + _PREPARE_STEP], first_index + s, policy))
        await asyncio.sleep(0)
    if len(parts) == 1:
        return parts[0]
    items: list[_Item] = []
    offset = 0
    for part in parts:
        for it in part.items:
            if it.sig_row >= 0:
                it.sig_row += offset
            items.append(it)
        offset += len(part.sigs)
    return _Chunk(
        items=items,
        sigs=np.concatenate([p.sigs for p in parts]),
        keys=[k for p in parts for k in p.keys],
        sig_bytes=b"".join(p.sig_bytes for p in parts),
        hashes=list(dict.fromkeys(h for p in parts for h in p.hashes)),
        n_rows=sum(p.n_rows for p in parts),
    )


async def _driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn` (same transaction), for COPY."""
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    return driver


async def _lookup(conn: AsyncConnection, datanet_id: int, chunk: _Chunk) -> _Lookup:
    """Which of the chunk's hashes a live record of the datanet holds; ids for its rows."""
    row = (
        await conn.execute(
            store.LOOKUP_CHUNK,
            {"datanet_id": datanet_id, "hashes": chunk.hashes, "n": chunk.n_rows},
        )
    ).one()
    live = {bytes(h): rid for h, rid in zip(row.hashes, row.holders, strict=True)}
    return _Lookup(live, list(row.ids))


async def _write(
    conn: AsyncConnection,
    driver: asyncpg.Connection,
    datanet_id: int,
    contributor: int,
    rows: list[store.NewRow],
) -> None:
    """Insert the rows: COPY for many, one INSERT (a round trip less) for a few."""
    if len(rows) <= _INSERT_MAX:
        if rows:
            await conn.execute(
                store.INSERT_CONTRIBUTIONS, store.insert_params(datanet_id, contributor, rows)
            )
    else:
        await driver.copy_records_to_table(
            store.CONTRIBUTIONS_TABLE,
            records=store.copy_tuples(datanet_id, contributor, rows),
            columns=store.CONTRIBUTION_COPY_COLUMNS,
        )
