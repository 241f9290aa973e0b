"""Named SQL of the adapter registry and lineage queries (tables from migration 0003)."""

from __future__ import annotations

from sqlalchemy import text

_ADAPTER_COLUMNS = """
    a.id, a.name, a.base_model, a.base_weights_sha256, a.owner_account_id, a.datanet_id,
    a.snapshot_id, a.path, a.weights_sha256, a.lineage_sha256, a.record_count,
    a.price_input_micros, a.price_output_micros, a.metadata::text AS metadata, a.status,
    to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at,
    extract(epoch FROM a.created_at)::bigint AS created_epoch,
    d.name AS datanet_name, acc.name AS owner_name
"""
_FROM = """
    FROM adapters a
    JOIN datanets d ON d.id = a.datanet_id
    JOIN accounts acc ON acc.id = a.owner_account_id
"""

LOCK_ADAPTER_NAME = text("SELECT pg_advisory_xact_lock(hashtext('royalty.adapter:' || :name))")

SELECT_ACTIVE_BY_NAME = text(
    f"SELECT {_ADAPTER_COLUMNS} {_FROM} WHERE a.name = :name AND a.status = 'active'"
)

SELECT_ACTIVE = text(f"SELECT {_ADAPTER_COLUMNS} {_FROM} WHERE a.status = 'active' ORDER BY a.name")

SELECT_LINEAGE_JSON = text("SELECT lineage::text FROM adapters WHERE id = :id")

RETIRE_ADAPTER = text(
    "UPDATE adapters SET status = 'retired', retired_at = now() WHERE id = :id AND status = 'active'"
)

INSERT_ADAPTER = text(
    """
    INSERT INTO adapters (
        name, base_model, base_weights_sha256, owner_account_id, datanet_id, snapshot_id,
        path, weights_sha256, lineage_sha256, lineage, record_count,
        price_input_micros, price_output_micros, metadata
    ) VALUES (
        :name, :base_model, :base_weights_sha256, :owner, :datanet_id, :snapshot_id,
        :path, :weights_sha256, :lineage_sha256, CAST(:lineage AS jsonb), :record_count,
        :price_input, :price_output, CAST(:metadata AS jsonb)
    )
    RETURNING id
    """
)

# Per-contributor record counts of an adapter: its training records are exactly its
# snapshot's records (the lineage names them in training order; the set is the same).
SELECT_ADAPTER_CONTRIBUTORS = text(
    """
    SELECT c.contributor_account_id AS account_id, acc.name AS account, count(*) AS records
    FROM snapshot_records sr
    JOIN contributions c ON c.id = sr.record_id
    JOIN accounts acc ON acc.id = c.contributor_account_id
    WHERE sr.snapshot_id = :snapshot_id
    GROUP BY c.contributor_account_id, acc.name
    ORDER BY records DESC, c.contributor_account_id
    """
)

SELECT_ADAPTER_RECORDS = text(
    """
    SELECT sr.position, sr.record_id, c.contributor_account_id, sr.record_hash
    FROM snapshot_records sr
    JOIN contributions c ON c.id = sr.record_id
    WHERE sr.snapshot_id = :snapshot_id AND sr.position >= :after
    ORDER BY sr.position
    LIMIT :limit
    """
)

SELECT_CONTRIBUTOR_ADAPTERS = text(
    f"""
    SELECT {_ADAPTER_COLUMNS}, mine.records AS contributor_records
    {_FROM}
    JOIN (
        SELECT sr.snapshot_id, count(*) AS records
        FROM contributions c
        JOIN snapshot_records sr ON sr.record_id = c.id
        WHERE c.contributor_account_id = :account_id
        GROUP BY sr.snapshot_id
    ) mine ON mine.snapshot_id = a.snapshot_id
    ORDER BY a.status, a.name, a.id
    """  # noqa: S608
)

# Who may see the record hashes of a datanet's snapshot: its owner and curators.
SELECT_DATANET_CURATORS = text(
    """
    SELECT d.owner_account_id,
           ARRAY(SELECT c.account_id FROM datanet_curators c WHERE c.datanet_id = d.id)
               AS curators
    FROM datanets d WHERE d.id = :id
    """
)
