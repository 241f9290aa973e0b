"""Snapshots: publishing a datanet's accepted records, and reading published snapshots.

A snapshot freezes the accepted records (ascending id) under a Merkle root; the factory
trains on its contents and contributors get inclusion proofs for their records. The Merkle
math itself is in `attribution.snapshots`.
"""

from __future__ import annotations

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from attribution import store
from attribution.access import fetch_datanet, readable_record
from attribution.errors import Forbidden, Invalid, NotFound
from attribution.snapshots import (
    WINDOW,
    InclusionProof,
    Snapshot,
    inclusion_proof,
    leaf_hash,
    merkle_levels,
    proof_from_windows,
    snapshot_id,
    stored_levels,
    window_of,
)


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


class Publishing:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def publish(self, datanet_id: int, actor_account_id: int | None = None) -> Snapshot:
        """Freeze the datanet's accepted records (ascending id) into a snapshot. Publishing
        with nothing new returns the latest snapshot unchanged."""
        async with self.engine.begin() as conn:
            d = await fetch_datanet(conn, datanet_id)
            if actor_account_id is not None and not d.is_curator(actor_account_id):
                raise Forbidden("only the datanet's curators publish it")
            await conn.execute(store.LOCK_DATANET, {"id": datanet_id})
            rows = (await conn.execute(store.SELECT_ACCEPTED, {"datanet_id": datanet_id})).all()
            if not rows:
                raise Invalid("the datanet has no accepted records to publish")
            hashes = [bytes(r.content_hash) for r in rows]
            levels = merkle_levels(hashes)
            root = levels[-1][0]
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
            written = await conn.execute(
                store.INSERT_SNAPSHOT_RECORDS_FROM_ACCEPTED,
                {"snapshot_id": sid, "datanet_id": datanet_id},
            )
            if written.rowcount != len(rows):  # the lock makes this impossible; make sure
                raise RuntimeError("the accepted records changed while publishing")
            kept = stored_levels(len(hashes))
            if kept:
                await conn.execute(
                    store.INSERT_SNAPSHOT_LEVELS,
                    {
                        "snapshot_id": sid,
                        "levels": kept,
                        "nodes": [b"".join(levels[lv]) for lv in kept],
                    },
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
            await fetch_datanet(conn, datanet_id)
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
        datanet's curators, or a trusted caller. Reads one window of 16 nodes per stored
        level of the tree (`attribution.snapshots`), so it costs the same at a million
        records as at a hundred."""
        async with self.engine.connect() as conn:
            snap_row = (await conn.execute(store.SELECT_SNAPSHOT, {"id": snapshot_id_})).first()
            if snap_row is None:
                raise NotFound(f"no snapshot {snapshot_id_}")
            await readable_record(conn, record_id, viewer_account_id)
            at = (
                await conn.execute(
                    store.SELECT_SNAPSHOT_RECORD_POSITION,
                    {"snapshot_id": snapshot_id_, "record_id": record_id},
                )
            ).first()
            if at is None:
                raise NotFound(f"record {record_id} is not in snapshot {snapshot_id_}")
            proof = await _proof(conn, snapshot_id_, at.position, snap_row.record_count)
        return RecordProof(
            snapshot_id=snapshot_id_,
            record_id=record_id,
            record_hash=bytes(at.record_hash).hex(),
            root=bytes(snap_row.root).hex(),
            proof=proof,
        )


async def _proof(
    conn: AsyncConnection, snapshot_id_: str, position: int, count: int
) -> InclusionProof:
    start, stop = window_of(position, 0)
    leaves = (
        await conn.execute(
            store.SELECT_SNAPSHOT_LEAF_WINDOW,
            {"snapshot_id": snapshot_id_, "start": start, "stop": stop},
        )
    ).scalars()
    windows = {0: [leaf_hash(bytes(h)) for h in leaves]}
    levels = stored_levels(count)
    if levels:
        rows = (
            await conn.execute(
                store.SELECT_SNAPSHOT_LEVEL_WINDOWS,
                {
                    "snapshot_id": snapshot_id_,
                    "levels": levels,
                    "starts": [window_of(position, lv)[0] for lv in levels],
                    "window": WINDOW,
                },
            )
        ).all()
        for lv, nodes in rows:
            data = bytes(nodes)
            windows[lv] = [data[i : i + 32] for i in range(0, len(data), 32)]
    if any(lv not in windows for lv in levels):
        # published before its levels were stored (migration 0005): hash the whole tree
        rows = (
            await conn.execute(store.SELECT_SNAPSHOT_RECORDS, {"snapshot_id": snapshot_id_})
        ).all()
        return inclusion_proof([bytes(r.record_hash) for r in rows], position)
    return proof_from_windows(position, count, windows)
