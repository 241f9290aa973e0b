"""`DatanetService`: what the gateway's routes and the CLI call.

Authorization facts are decided here: the owner and curators of a datanet decide its pending
records and publish it; a contributor reads only their own records and proofs. Methods take
the acting account id; `None` means a trusted caller (admin scope, CLI, workers) and skips
those checks.

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
from attribution.datanets import (
    AcceptanceMode,
    Datanet,
    Decision,
    StoredRecord,
    check_new_datanet,
)
from attribution.dedup import NearDupIndex
from attribution.errors import (
    BulkRejected,
    Conflict,
    DuplicateRecord,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    RecordRejected,
    Rejected,
)
from attribution.records import (
    Prepared,
    QualityPolicy,
    Record,
    RejectReason,
    SubmissionResult,
    prepare,
)
from attribution.snapshots import (
    InclusionProof,
    Snapshot,
    inclusion_proof,
    merkle_root,
    snapshot_id,
)

RawRecord = bytes | str | dict[str, Any] | Record
_NO_ROW_REASONS = frozenset(
    {RejectReason.INVALID_UTF8, RejectReason.INVALID_SCHEMA, RejectReason.TOO_LARGE}
)
RATE_WINDOW_S = 60.0


class RecordProof(msgspec.Struct):
    snapshot_id: str
    record_id: int
    record_hash: str
    root: str
    proof: InclusionProof


class TrainingRecord(msgspec.Struct, omit_defaults=True):
    position: int
    record_id: int
    contributor_account_id: int
    record_hash: str
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None


class _Item(msgspec.Struct):
    index: int
    prepared: Prepared | None = None
    signature: MinHash | None = None
    rejection: SubmissionResult | None = None
    kind: str | None = None


class DatanetService:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._indexes: dict[int, NearDupIndex] = {}
        # What ingestion needs of a datanet (policy, mode) never changes once created.
        self._ingest_datanets: dict[int, Datanet] = {}

    # --- datanets ---------------------------------------------------------------------------
    async def create_datanet(
        self,
        name: str,
        owner_account_id: int,
        licence: str,
        acceptance_mode: AcceptanceMode = "open",
        description: str = "",
        curators: Sequence[int] = (),
        policy: QualityPolicy | None = None,
    ) -> Datanet:
        check_new_datanet(name, licence, acceptance_mode)
        policy = policy or QualityPolicy()
        try:
            async with self.engine.begin() as conn:
                datanet_id = (
                    await conn.execute(
                        store.INSERT_DATANET,
                        {
                            "name": name,
                            "owner": owner_account_id,
                            "licence": licence,
                            "mode": acceptance_mode,
                            "description": description,
                            "policy": msgspec.json.encode(policy).decode(),
                        },
                    )
                ).scalar_one()
                if curators:
                    await conn.execute(
                        store.INSERT_CURATORS,
                        {"datanet_id": datanet_id, "accounts": sorted(set(curators))},
                    )
                return await self._datanet(conn, datanet_id)
        except IntegrityError as e:
            if store.sqlstate(e) == "23505":
                raise Conflict(f"a datanet named {name!r} exists") from None
            if store.sqlstate(e) == "23503":
                raise NotFound("the owner or a curator account does not exist") from None
            raise

    async def add_curators(
        self, datanet_id: int, accounts: Sequence[int], actor_account_id: int | None
    ) -> Datanet:
        async with self.engine.begin() as conn:
            d = await self._datanet(conn, datanet_id)
            if actor_account_id is not None and actor_account_id != d.owner_account_id:
                raise Forbidden("only the datanet's owner adds curators")
            try:
                await conn.execute(
                    store.INSERT_CURATORS, {"datanet_id": datanet_id, "accounts": list(accounts)}
                )
            except IntegrityError:
                raise NotFound("a curator account does not exist") from None
            return await self._datanet(conn, datanet_id)

    async def get_datanet(self, datanet_id: int) -> Datanet:
        async with self.engine.connect() as conn:
            return await self._datanet(conn, datanet_id)

    async def get_datanet_by_name(self, name: str) -> Datanet:
        async with self.engine.connect() as conn:
            row = (await conn.execute(store.SELECT_DATANET_BY_NAME, {"name": name})).first()
        if row is None:
            raise NotFound(f"no datanet named {name!r}")
        return store.row_to_datanet(row)

    async def list_datanets(self) -> list[Datanet]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(store.SELECT_DATANETS)).all()
        return [store.row_to_datanet(r) for r in rows]

    async def _datanet(self, conn: AsyncConnection, datanet_id: int) -> Datanet:
        row = (await conn.execute(store.SELECT_DATANET, {"id": datanet_id})).first()
        if row is None:
            raise NotFound(f"no datanet {datanet_id}")
        return store.row_to_datanet(row)

    # --- submissions ------------------------------------------------------------------------
    async def submit(
        self, datanet_id: int, contributor_account_id: int, record: RawRecord
    ) -> SubmissionResult:
        """Submit one record. Returns the result when it is accepted, pending or flagged;
        raises `DuplicateRecord`, `RecordRejected` or `RateLimited` otherwise."""
        (result,) = await self._ingest(datanet_id, contributor_account_id, [record], False, True)
        if result.status == "rejected":
            if result.reason == RejectReason.DUPLICATE:
                raise DuplicateRecord(result)
            if result.reason == RejectReason.RATE_LIMITED:
                raise RateLimited(result)
            raise RecordRejected(result)
        return result

    async def submit_bulk(
        self,
        datanet_id: int,
        contributor_account_id: int,
        records: Sequence[RawRecord],
        *,
        atomic: bool = False,
        rate_limit: bool = True,
    ) -> list[SubmissionResult]:
        """Submit many records; one result per record, in order. With `atomic`, nothing is
        written unless no record is rejected (`BulkRejected` otherwise). `rate_limit=False`
        is for trusted imports (admin CLI, demo datanets) only."""
        return await self._ingest(datanet_id, contributor_account_id, records, atomic, rate_limit)

    async def _ingest(
        self,
        datanet_id: int,
        contributor: int,
        raws: Sequence[RawRecord],
        atomic: bool,
        rate_limit: bool,
    ) -> list[SubmissionResult]:
        datanet = self._ingest_datanets.get(datanet_id)
        if datanet is None:
            datanet = await self.get_datanet(datanet_id)
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
                index = await self._index(
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
            self._indexes.pop(datanet_id, None)
            if store.sqlstate(e) == "23503":
                raise NotFound("the contributor account does not exist") from None
            if store.sqlstate(e) == "23505":
                raise Conflict("a concurrent submission stored the same content") from None
            raise
        except BaseException:
            self._indexes.pop(datanet_id, None)
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

    async def _index(
        self,
        conn: AsyncConnection,
        datanet_id: int,
        policy: QualityPolicy,
        last_record_id: int,
        epoch: int,
    ) -> NearDupIndex:
        """The datanet's near-duplicate index, built or caught up from the database. Call
        with the datanet's row lock held (which read `last_record_id` and `epoch`)."""
        index = self._indexes.get(datanet_id)
        if index is None or index.epoch != epoch:
            index = NearDupIndex(policy.near_duplicate_threshold)
            index.epoch = epoch
            self._indexes[datanet_id] = index
        if last_record_id > index.watermark:
            rows = await conn.execute(
                store.LOAD_SIGNATURES, {"datanet_id": datanet_id, "after": index.watermark}
            )
            for rid, sig in rows:
                index.insert(rid, dedup.from_bytes(bytes(sig)))
            index.watermark = last_record_id
        return index

    def forget_index(self, datanet_id: int) -> None:
        """Drop the in-memory near-duplicate index; the next submission rebuilds it."""
        self._indexes.pop(datanet_id, None)

    # --- curation ---------------------------------------------------------------------------
    async def pending(
        self, datanet_id: int, curator_account_id: int | None, limit: int = 1000
    ) -> list[StoredRecord]:
        """Pending and flagged records awaiting a curator, oldest first."""
        async with self.engine.connect() as conn:
            d = await self._datanet(conn, datanet_id)
            if curator_account_id is not None and not d.is_curator(curator_account_id):
                raise Forbidden("only the datanet's curators see pending records")
            rows = (
                await conn.execute(store.SELECT_PENDING, {"datanet_id": datanet_id, "limit": limit})
            ).all()
        return [store.row_to_record(r) for r in rows]

    async def decide(
        self,
        record_id: int,
        curator_account_id: int,
        approve: bool,
        reason: str,
        *,
        trusted: bool = False,
    ) -> Decision:
        """Approve (-> accepted) or reject (-> rejected) a pending or flagged record; the
        decision is recorded (append-only) with who, what, why and when. `trusted` (an admin)
        skips the curator check but is still recorded as the decider."""
        if not reason.strip():
            raise Invalid("a decision needs a reason")
        async with self.engine.begin() as conn:
            row = (await conn.execute(store.SELECT_RECORD, {"id": record_id})).first()
            if row is None:
                raise NotFound(f"no record {record_id}")
            d = await self._datanet(conn, row.datanet_id)
            if not trusted and not d.is_curator(curator_account_id):
                raise Forbidden("only the datanet's curators decide its records")
            lock = (await conn.execute(store.LOCK_DATANET, {"id": d.id})).one()
            row = (await conn.execute(store.SELECT_RECORD_FOR_UPDATE, {"id": record_id})).one()
            if row.status not in ("pending", "flagged"):
                raise Conflict(f"record {record_id} is {row.status}, not awaiting a decision")
            to_status = "accepted" if approve else "rejected"
            await conn.execute(
                store.UPDATE_RECORD_STATUS,
                {
                    "id": record_id,
                    "status": to_status,
                    "reason": row.reason if approve else RejectReason.CURATOR_REJECTED.value,
                    "detail": row.detail if approve else reason,
                },
            )
            params = {
                "record_id": record_id,
                "datanet_id": d.id,
                "curator": curator_account_id,
                "approve": approve,
                "from_status": row.status,
                "to_status": to_status,
                "reason": reason,
            }
            dec_id, decided_at = (await conn.execute(store.INSERT_DECISION, params)).one()
            # the near-duplicate index holds accepted and pending records: approving a
            # flagged record adds one, rejecting a pending one removes one. Other processes
            # learn of it from the epoch and rebuild their index.
            changes_index = (approve and row.status == "flagged") or (
                not approve and row.status == "pending"
            )
            if changes_index:
                new_epoch = (await conn.execute(store.BUMP_INDEX_EPOCH, {"id": d.id})).scalar_one()
        index = self._indexes.get(d.id)
        if changes_index and index is not None:
            if index.epoch != lock.index_epoch:
                self._indexes.pop(d.id, None)
            else:
                if approve and row.minhash is not None:
                    index.insert(record_id, dedup.from_bytes(bytes(row.minhash)))
                elif not approve:
                    index.remove(record_id)
                index.epoch = new_epoch
        return Decision(
            id=dec_id,
            record_id=record_id,
            datanet_id=d.id,
            curator_account_id=curator_account_id,
            approve=approve,
            from_status=row.status,
            to_status=to_status,
            reason=reason,
            decided_at=decided_at.isoformat(),
        )

    async def decisions(self, record_id: int, viewer_account_id: int | None) -> list[Decision]:
        async with self.engine.connect() as conn:
            await self._readable_record(conn, record_id, viewer_account_id)
            rows = (await conn.execute(store.SELECT_DECISIONS, {"record_id": record_id})).all()
        return [store.row_to_decision(r) for r in rows]

    # --- reading records --------------------------------------------------------------------
    async def get_record(self, record_id: int, viewer_account_id: int | None) -> StoredRecord:
        """A record, for its contributor or the datanet's curators; NotFound for anyone else
        (existence is not revealed)."""
        async with self.engine.connect() as conn:
            return await self._readable_record(conn, record_id, viewer_account_id)

    async def _readable_record(
        self, conn: AsyncConnection, record_id: int, viewer: int | None
    ) -> StoredRecord:
        row = (await conn.execute(store.SELECT_RECORD, {"id": record_id})).first()
        if row is None:
            raise NotFound(f"no record {record_id}")
        if viewer is not None and viewer != row.contributor_account_id:
            d = await self._datanet(conn, row.datanet_id)
            if not d.is_curator(viewer):
                raise NotFound(f"no record {record_id}")
        return store.row_to_record(row)

    async def records_of(
        self,
        contributor_account_id: int,
        viewer_account_id: int | None,
        datanet_id: int | None = None,
        limit: int = 10_000,
    ) -> list[StoredRecord]:
        """A contributor's own records (every status, with reasons)."""
        if viewer_account_id is not None and viewer_account_id != contributor_account_id:
            raise Forbidden("a contributor reads only their own records")
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    store.SELECT_RECORDS_OF,
                    {
                        "contributor": contributor_account_id,
                        "datanet_id": datanet_id,
                        "limit": limit,
                    },
                )
            ).all()
        return [store.row_to_record(r) for r in rows]

    # --- snapshots --------------------------------------------------------------------------
    async def publish(self, datanet_id: int, actor_account_id: int | None = None) -> Snapshot:
        """Freeze the datanet's accepted records (ascending id) into a snapshot. Publishing
        with nothing new returns the latest snapshot unchanged."""
        async with self.engine.begin() as conn:
            d = await self._datanet(conn, datanet_id)
            if actor_account_id is not None and not d.is_curator(actor_account_id):
                raise Forbidden("only the datanet's curators publish it")
            await conn.execute(store.LOCK_DATANET, {"id": datanet_id})
            rows = (await conn.execute(store.SELECT_ACCEPTED, {"datanet_id": datanet_id})).all()
            if not rows:
                raise Invalid("the datanet has no accepted records to publish")
            record_ids = [r.id for r in rows]
            hashes = [bytes(r.content_hash) for r in rows]
            root = merkle_root(hashes)
            sid = snapshot_id(datanet_id, root)
            existing = (await conn.execute(store.SELECT_SNAPSHOT, {"id": sid})).first()
            if existing is not None:
                return store.row_to_snapshot(existing)
            seq = (
                await conn.execute(store.NEXT_SNAPSHOT_SEQ, {"datanet_id": datanet_id})
            ).scalar_one()
            tokens = sum(r.token_count for r in rows)
            created_at = (
                await conn.execute(
                    store.INSERT_SNAPSHOT,
                    {
                        "id": sid,
                        "datanet_id": datanet_id,
                        "seq": seq,
                        "root": root,
                        "record_count": len(rows),
                        "token_count": tokens,
                    },
                )
            ).scalar_one()
            await conn.execute(
                store.INSERT_SNAPSHOT_RECORDS,
                {"snapshot_id": sid, "record_ids": record_ids, "hashes": hashes},
            )
        return Snapshot(
            id=sid,
            datanet_id=datanet_id,
            seq=seq,
            root=root.hex(),
            record_count=len(rows),
            token_count=tokens,
            created_at=created_at.isoformat(),
        )

    async def get_snapshot(self, snapshot_id_: str) -> Snapshot:
        async with self.engine.connect() as conn:
            row = (await conn.execute(store.SELECT_SNAPSHOT, {"id": snapshot_id_})).first()
        if row is None:
            raise NotFound(f"no snapshot {snapshot_id_}")
        return store.row_to_snapshot(row)

    async def snapshots(self, datanet_id: int) -> list[Snapshot]:
        async with self.engine.connect() as conn:
            await self._datanet(conn, datanet_id)
            rows = (await conn.execute(store.SELECT_SNAPSHOTS, {"datanet_id": datanet_id})).all()
        return [store.row_to_snapshot(r) for r in rows]

    async def snapshot_records(self, snapshot_id_: str) -> list[tuple[int, str]]:
        """(record id, record hash hex) in snapshot order: what the factory trains on."""
        async with self.engine.connect() as conn:
            if (await conn.execute(store.SELECT_SNAPSHOT, {"id": snapshot_id_})).first() is None:
                raise NotFound(f"no snapshot {snapshot_id_}")
            rows = (
                await conn.execute(store.SELECT_SNAPSHOT_RECORDS, {"snapshot_id": snapshot_id_})
            ).all()
        return [(r.record_id, bytes(r.record_hash).hex()) for r in rows]

    async def snapshot_contents(self, snapshot_id_: str) -> list[TrainingRecord]:
        """The snapshot's records with their content, in snapshot order (for the factory)."""
        async with self.engine.connect() as conn:
            if (await conn.execute(store.SELECT_SNAPSHOT, {"id": snapshot_id_})).first() is None:
                raise NotFound(f"no snapshot {snapshot_id_}")
            rows = (
                await conn.execute(store.SELECT_SNAPSHOT_CONTENTS, {"snapshot_id": snapshot_id_})
            ).all()
        return [
            TrainingRecord(
                position=r.position,
                record_id=r.record_id,
                contributor_account_id=r.contributor_account_id,
                record_hash=bytes(r.record_hash).hex(),
                text=r.text,
                prompt=r.prompt,
                completion=r.completion,
            )
            for r in rows
        ]

    async def snapshot_contributors(self, snapshot_id_: str) -> dict[int, int]:
        """Contributor account id -> number of their records in the snapshot."""
        async with self.engine.connect() as conn:
            if (await conn.execute(store.SELECT_SNAPSHOT, {"id": snapshot_id_})).first() is None:
                raise NotFound(f"no snapshot {snapshot_id_}")
            rows = (
                await conn.execute(
                    store.SELECT_SNAPSHOT_CONTRIBUTORS, {"snapshot_id": snapshot_id_}
                )
            ).all()
        return {r.contributor_account_id: r.records for r in rows}

    async def inclusion_proof(
        self, snapshot_id_: str, record_id: int, viewer_account_id: int | None = None
    ) -> RecordProof:
        """Proof that `record_id` is in the snapshot; for the record's contributor, the
        datanet's curators, or a trusted caller."""
        async with self.engine.connect() as conn:
            snap_row = (await conn.execute(store.SELECT_SNAPSHOT, {"id": snapshot_id_})).first()
            if snap_row is None:
                raise NotFound(f"no snapshot {snapshot_id_}")
            await self._readable_record(conn, record_id, viewer_account_id)
            rows = (
                await conn.execute(store.SELECT_SNAPSHOT_RECORDS, {"snapshot_id": snapshot_id_})
            ).all()
        hashes = [bytes(r.record_hash) for r in rows]
        position = next((r.position for r in rows if r.record_id == record_id), None)
        if position is None:
            raise NotFound(f"record {record_id} is not in snapshot {snapshot_id_}")
        return RecordProof(
            snapshot_id=snapshot_id_,
            record_id=record_id,
            record_hash=hashes[position].hex(),
            root=bytes(snap_row.root).hex(),
            proof=inclusion_proof(hashes, position),
        )


__all__ = [
    "BulkRejected",
    "Conflict",
    "DatanetService",
    "DuplicateRecord",
    "Forbidden",
    "Invalid",
    "NotFound",
    "RateLimited",
    "RecordProof",
    "RecordRejected",
    "Rejected",
    "SubmissionResult",
]
