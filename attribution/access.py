"""Reads every part of the datanet service shares, with the rule for who may read a record.

A record is readable by its contributor and by its datanet's curators; anyone else gets
`NotFound`, the same answer as for a missing record, so existence is not revealed. A `None`
viewer is a trusted caller (admin scope, CLI, workers) and skips the check.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from attribution import store
from attribution.datanets import Datanet, StoredRecord
from attribution.errors import NotFound


async def fetch_datanet(conn: AsyncConnection, datanet_id: int) -> Datanet:
    row = (await conn.execute(store.SELECT_DATANET, {"id": datanet_id})).first()
    if row is None:
        raise NotFound(f"no datanet {datanet_id}")
    return store.row_to_datanet(row)


async def readable_record(
    conn: AsyncConnection, record_id: int, viewer: int | None
) -> StoredRecord:
    row = (await conn.execute(store.SELECT_RECORD, {"id": record_id})).first()
    if row is None:
        raise NotFound(f"no record {record_id}")
    if viewer is not None and viewer != row.contributor_account_id:
        d = await fetch_datanet(conn, row.datanet_id)
        if not d.is_curator(viewer):
            raise NotFound(f"no record {record_id}")
    return store.row_to_record(row)
