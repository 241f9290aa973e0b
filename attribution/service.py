"""`DatanetService`: what the gateway's routes and the CLI call.

Authorization facts are decided in the service (here and in its parts): the owner and
curators of a datanet decide its pending records and publish it; a contributor reads only
their own records and proofs. Methods take the acting account id; `None` means a trusted
caller (admin scope, CLI, workers) and skips those checks.

The service is a facade over its parts, each in its own module: submission and the
near-duplicate indexes (`attribution.ingest`), curator decisions (`attribution.curation`),
snapshots and proofs (`attribution.publishing`), and the reads they share
(`attribution.access`). Datanets themselves and reading records stay here.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from attribution import store
from attribution.access import fetch_datanet, readable_record
from attribution.curation import Curation
from attribution.datanets import (
    MAX_ACCOUNT_ID,
    AcceptanceMode,
    Datanet,
    Decision,
    StoredRecord,
    check_new_datanet,
)
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

# Re-exported: these names were defined here before the split and callers import them from
# here (the gateway's 429 handler reads RATE_WINDOW_S).
from attribution.ingest import RATE_WINDOW_S as RATE_WINDOW_S
from attribution.ingest import Ingestion, NearDupIndexes
from attribution.ingest import RawRecord as RawRecord
from attribution.publishing import Publishing
from attribution.publishing import RecordProof as RecordProof
from attribution.publishing import TrainingRecord as TrainingRecord
from attribution.records import QualityPolicy, RejectReason, SubmissionResult
from attribution.rehash import RehashReport, rehash_datanet
from attribution.snapshots import Snapshot


class DatanetService:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # One set of near-duplicate indexes per service: ingestion and curation share it.
        indexes = NearDupIndexes()
        self._ingestion = Ingestion(engine, indexes)
        self._curation = Curation(engine, indexes)
        self._publishing = Publishing(engine)

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
        check_new_datanet(name, licence, acceptance_mode, description, curators, policy)
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
                return await fetch_datanet(conn, datanet_id)
        except IntegrityError as e:
            if store.sqlstate(e) == "23505":
                raise Conflict(f"a datanet named {name!r} exists") from None
            if store.sqlstate(e) == "23503":
                raise NotFound("the owner or a curator account does not exist") from None
            raise

    async def add_curators(
        self, datanet_id: int, accounts: Sequence[int], actor_account_id: int | None
    ) -> Datanet:
        if any(not 1 <= a <= MAX_ACCOUNT_ID for a in accounts):
            raise Invalid("a curator is an account id (a positive 64-bit integer)")
        async with self.engine.begin() as conn:
            d = await fetch_datanet(conn, datanet_id)
            if actor_account_id is not None and actor_account_id != d.owner_account_id:
                raise Forbidden("only the datanet's owner adds curators")
            try:
                await conn.execute(
                    store.INSERT_CURATORS, {"datanet_id": datanet_id, "accounts": list(accounts)}
                )
            except IntegrityError:
                raise NotFound("a curator account does not exist") from None
            return await fetch_datanet(conn, datanet_id)

    async def get_datanet(self, datanet_id: int) -> Datanet:
        async with self.engine.connect() as conn:
            return await fetch_datanet(conn, datanet_id)

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

    # --- submissions ------------------------------------------------------------------------
    async def submit(
        self, datanet_id: int, contributor_account_id: int, record: RawRecord
    ) -> SubmissionResult:
        """Submit one record. Returns the result when it is accepted, pending or flagged;
        raises `DuplicateRecord`, `RecordRejected` or `RateLimited` otherwise."""
        (result,) = await self._ingestion.ingest(
            datanet_id, contributor_account_id, [record], False, True
        )
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
        return await self._ingestion.ingest(
            datanet_id, contributor_account_id, records, atomic, rate_limit
        )

    async def rehash(self, datanet_id: int) -> RehashReport:
        """Bring the datanet's stored content hashes and signatures to the current
        normalisation, rejecting and flagging the copies it reveals (`attribution.rehash`).
        Trusted callers only (an operator after an upgrade)."""
        return await rehash_datanet(self.engine, datanet_id)

    def forget_index(self, datanet_id: int) -> None:
        """Drop the in-memory near-duplicate index; the next submission rebuilds it."""
        self._ingestion.indexes.forget(datanet_id)

    # --- curation ---------------------------------------------------------------------------
    async def pending(
        self, datanet_id: int, curator_account_id: int | None, limit: int = 1000
    ) -> list[StoredRecord]:
        """Pending and flagged records awaiting a curator, oldest first."""
        return await self._curation.pending(datanet_id, curator_account_id, limit)

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
        skips the curator check but is still recorded as the decider. No one decides a
        record they contributed (`Forbidden`)."""
        return await self._curation.decide(
            record_id, curator_account_id, approve, reason, trusted=trusted
        )

    async def decisions(self, record_id: int, viewer_account_id: int | None) -> list[Decision]:
        return await self._curation.decisions(record_id, viewer_account_id)

    # --- reading records --------------------------------------------------------------------
    async def get_record(self, record_id: int, viewer_account_id: int | None) -> StoredRecord:
        """A record, for its contributor or the datanet's curators; NotFound for anyone else
        (existence is not revealed)."""
        async with self.engine.connect() as conn:
            return await readable_record(conn, record_id, viewer_account_id)

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
        return await self._publishing.publish(datanet_id, actor_account_id)

    async def get_snapshot(self, snapshot_id_: str) -> Snapshot:
        return await self._publishing.get_snapshot(snapshot_id_)

    async def snapshots(self, datanet_id: int) -> list[Snapshot]:
        return await self._publishing.snapshots(datanet_id)

    async def snapshot_records(self, snapshot_id_: str) -> list[tuple[int, str]]:
        """(record id, record hash hex) in snapshot order: what the factory trains on."""
        return await self._publishing.snapshot_records(snapshot_id_)

    async def snapshot_contents(self, snapshot_id_: str) -> list[TrainingRecord]:
        """The snapshot's records with their content, in snapshot order (for the factory)."""
        return await self._publishing.snapshot_contents(snapshot_id_)

    async def snapshot_contributors(self, snapshot_id_: str) -> dict[int, int]:
        """Contributor account id -> number of their records in the snapshot."""
        return await self._publishing.snapshot_contributors(snapshot_id_)

    async def inclusion_proof(
        self, snapshot_id_: str, record_id: int, viewer_account_id: int | None = None
    ) -> RecordProof:
        """Proof that `record_id` is in the snapshot; for the record's contributor, the
        datanet's curators, or a trusted caller."""
        return await self._publishing.inclusion_proof(snapshot_id_, record_id, viewer_account_id)


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
