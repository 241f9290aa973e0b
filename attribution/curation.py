"""Curation: the owner and curators of a datanet decide its pending and flagged records.

No one decides their own record: a curator (the owner included, and an admin acting under
their own account) who contributed a record is refused (`Forbidden`, 403), whichever way they
would decide, so approving one's own flagged near duplicate or pending record can never
raise one's own share; another curator decides it.

Every decision is recorded (append-only) with who, what, why and when. A decision that
changes which records the near-duplicate index holds bumps the datanet's `index_epoch`, so
other processes rebuild their index; this process updates its own in place.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from attribution import dedup, store
from attribution.access import fetch_datanet, readable_record
from attribution.datanets import Decision, StoredRecord
from attribution.errors import Conflict, Forbidden, Invalid, NotFound
from attribution.ingest import NearDupIndexes
from attribution.records import RejectReason
from attribution.textnorm import text_problem

MAX_REASON_CHARS = 2000


class Curation:
    def __init__(self, engine: AsyncEngine, indexes: NearDupIndexes) -> None:
        self.engine = engine
        self.indexes = indexes

    async def pending(
        self, datanet_id: int, curator_account_id: int | None, limit: int = 1000
    ) -> list[StoredRecord]:
        """Pending and flagged records awaiting a curator, oldest first."""
        async with self.engine.connect() as conn:
            d = await fetch_datanet(conn, datanet_id)
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
        skips the curator check but is still recorded as the decider; no one, trusted or not,
        decides a record they contributed."""
        problem = text_problem(reason)
        if problem is not None:
            raise Invalid(f"the reason {problem}")
        if len(reason) > MAX_REASON_CHARS:
            raise Invalid(f"a reason has at most {MAX_REASON_CHARS} characters")
        if not reason.strip():
            raise Invalid("a decision needs a reason")
        async with self.engine.begin() as conn:
            row = (await conn.execute(store.SELECT_RECORD, {"id": record_id})).first()
            if row is None:
                raise NotFound(f"no record {record_id}")
            d = await fetch_datanet(conn, row.datanet_id)
            if not trusted and not d.is_curator(curator_account_id):
                raise Forbidden("only the datanet's curators decide its records")
            if row.contributor_account_id == curator_account_id:
                raise Forbidden(
                    f"record {record_id} is your own contribution: a curator cannot decide "
                    "their own records; another curator of the datanet must"
                )
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
        index = self.indexes.get(d.id)
        if changes_index and index is not None:
            if index.epoch != lock.index_epoch:
                self.indexes.forget(d.id)
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
            await readable_record(conn, record_id, viewer_account_id)
            rows = (await conn.execute(store.SELECT_DECISIONS, {"record_id": record_id})).all()
        return [store.row_to_decision(r) for r in rows]
