"""Record submission: validation, duplicate checks and insertion, single and bulk.

Submission pipeline (single and bulk share it): decode and validate (UTF-8, schema, size),
normalise, hash, quality rules (all outside any transaction), MinHash signature; then, in
one transaction holding the datanet's row lock: rate limit, exact duplicates (against the
datanet and earlier records of the same batch), near duplicates (LSH), insert. Rows are
written for every record that passed validation, rejected ones without their content (so
junk is visible and counts toward the rate limit); records that fail validation or are rate
limited leave no row.

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

from collections.abc import Sequence
from typing import Any

import msgspec
from datasketch import MinHash
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attribution import dedup, store
from attribution.access import fetch_datanet
from attribution.datanets import Datanet
from attribution.dedup import NearDupIndex
from attribution.errors import BulkRejected, Conflict, NotFound, RecordRejected
from attribution.records import (
    Prepared,
    QualityPolicy,
    Record,
    RejectReason,
    SubmissionResult,
    prepare,
)

RawRecord = bytes | str | dict[str, Any] | Record
_NO_ROW_REASONS = frozenset(
    {RejectReason.INVALID_UTF8, RejectReason.INVALID_SCHEMA, RejectReason.TOO_LARGE}
)
RATE_WINDOW_S = 60.0


class _Item(msgspec.Struct):
    index: int
    prepared: Prepared | None = None
    signature: MinHash | None = None
    rejection: SubmissionResult | None = None
    kind: str | None = None


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
            rows = await conn.execute(
                store.LOAD_SIGNATURES, {"datanet_id": datanet_id, "after": index.watermark}
            )
            for rid, sig in rows:
                index.insert(rid, dedup.from_bytes(bytes(sig)))
            index.watermark = last_record_id
        return index


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
        items = [self._prepare(i, raw, policy) for i, raw in enumerate(raws)]
        added: list[int] = []
        index: NearDupIndex | None = None
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
                results, rows = await self._decide_items(
                    conn, datanet, contributor, items, index, added, rate_limit
                )
                if atomic and any(r.status == "rejected" for r in results):
                    raise BulkRejected(results)
                if rows:
                    await conn.execute(
                        store.INSERT_CONTRIBUTIONS,
                        store.insert_params(datanet_id, contributor, rows),
                    )
                    last = max(r.id for r in rows)
                    await conn.execute(
                        store.SET_LAST_RECORD, {"id": datanet_id, "last_record_id": last}
                    )
                    index.watermark = max(index.watermark, last)
        except BulkRejected:
            for rid in added:
                if index is not None:
                    index.remove(rid)
            raise
        except IntegrityError as e:
            self.indexes.forget(datanet_id)
            if store.sqlstate(e) == "23503":
                raise NotFound("the contributor account does not exist") from None
            if store.sqlstate(e) == "23505":
                raise Conflict("a concurrent submission stored the same content") from None
            raise
        except BaseException:
            self.indexes.forget(datanet_id)
            raise
        return results

    @staticmethod
    def _prepare(i: int, raw: RawRecord, policy: QualityPolicy) -> _Item:
        try:
            p = prepare(raw, policy, i)
        except RecordRejected as e:
            return _Item(i, rejection=e.result, kind=e.kind)
        return _Item(i, prepared=p, signature=dedup.signature(p.normalised))

    async def _decide_items(
        self,
        conn: AsyncConnection,
        datanet: Datanet,
        contributor: int,
        items: list[_Item],
        index: NearDupIndex,
        added: list[int],
        rate_limit: bool,
    ) -> tuple[list[SubmissionResult], list[store.NewRow]]:
        policy = datanet.policy
        remaining: int | None = None
        if rate_limit and policy.max_records_per_minute:
            recent = (
                await conn.execute(
                    store.COUNT_RECENT,
                    {
                        "datanet_id": datanet.id,
                        "contributor": contributor,
                        "window_s": RATE_WINDOW_S,
                    },
                )
            ).scalar_one()
            remaining = max(0, policy.max_records_per_minute - recent)
        hashes = {it.prepared.content_hash for it in items if it.prepared is not None}
        live: dict[bytes, int] = {}
        if hashes:
            found = await conn.execute(
                store.FIND_LIVE_HASHES, {"datanet_id": datanet.id, "hashes": list(hashes)}
            )
            live = {bytes(h): rid for h, rid in found.all()}
        n_rows = sum(
            1
            for it in items
            if it.prepared is not None
            or (it.rejection is not None and it.rejection.reason not in _NO_ROW_REASONS)
        )
        ids: list[int] = []
        if n_rows:
            ids = list((await conn.execute(store.NEXT_IDS, {"n": n_rows})).scalars())
        next_id = iter(ids)
        live_status = "pending" if datanet.acceptance_mode == "curated" else "accepted"
        results: list[SubmissionResult] = []
        rows: list[store.NewRow] = []
        for it in items:
            rej = it.rejection
            if rej is not None and rej.reason in _NO_ROW_REASONS:
                results.append(rej)
                continue
            if remaining is not None:
                if remaining <= 0:
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
                remaining -= 1
            rid = next(next_id)
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
            assert p is not None and it.signature is not None
            rec = p.record
            h_hex = p.content_hash.hex()
            first = live.get(p.content_hash)
            if first is not None:
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
                        f"same normalised content as record {first}",
                        duplicate_of=first,
                    )
                )
                results.append(
                    SubmissionResult(
                        index=it.index,
                        status="rejected",
                        record_id=rid,
                        reason=RejectReason.DUPLICATE.value,
                        detail=f"same normalised content as record {first}",
                        duplicate_of=first,
                        content_hash=h_hex,
                    )
                )
                continue
            live[p.content_hash] = rid
            near = index.query(it.signature)
            status = live_status if near is None else "flagged"
            reason = detail = None
            near_id: int | None = None
            if near is not None:
                near_id = near[0]
                reason = RejectReason.NEAR_DUPLICATE.value
                detail = f"near duplicate of record {near_id} (similarity {near[1]:.2f})"
            else:
                index.insert(rid, it.signature)
                added.append(rid)
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
                    dedup.to_bytes(it.signature),
                    p.token_count,
                    status,
                    reason,
                    detail,
                    near_duplicate_of=near_id,
                )
            )
            results.append(
                SubmissionResult(
                    index=it.index,
                    status=status,  # type: ignore[arg-type]
                    record_id=rid,
                    reason=reason,
                    detail=detail,
                    near_duplicate_of=near_id,
                    content_hash=h_hex,
                )
            )
        return results, rows
