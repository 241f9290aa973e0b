"""The attribution package's SQL (tables from migration 0002) and row conversions.

Submissions to one datanet are serialised by a row lock on the datanet (`FOR NO KEY UPDATE`,
which does not block the foreign-key checks of other tables); the partial unique index
`contributions_live_content` is the database-level guarantee behind exact deduplication.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from attribution.datanets import Datanet, Decision, StoredRecord
from attribution.records import QualityPolicy
from attribution.snapshots import Snapshot

LIVE_STATUSES = ("accepted", "pending", "flagged")

INSERT_DATANET = text(
    """
    INSERT INTO datanets (name, owner_account_id, licence, acceptance_mode, description, policy)
    VALUES (:name, :owner, :licence, :mode, :description, CAST(:policy AS jsonb))
    RETURNING id
    """
)
INSERT_CURATORS = text(
    """
    INSERT INTO datanet_curators (datanet_id, account_id)
    SELECT :datanet_id, a FROM unnest(CAST(:accounts AS bigint[])) AS a
    ON CONFLICT DO NOTHING
    """
)
_DATANET_COLUMNS = """
    d.id, d.name, d.owner_account_id, d.licence, d.acceptance_mode, d.description,
    d.policy::text AS policy, d.created_at,
    ARRAY(SELECT c.account_id FROM datanet_curators c WHERE c.datanet_id = d.id
          ORDER BY c.account_id) AS curators
"""
SELECT_DATANET = text(f"SELECT {_DATANET_COLUMNS} FROM datanets d WHERE d.id = :id")  # noqa: S608
SELECT_DATANET_BY_NAME = text(
    f"SELECT {_DATANET_COLUMNS} FROM datanets d WHERE d.name = :name"  # noqa: S608
)
SELECT_DATANETS = text(f"SELECT {_DATANET_COLUMNS} FROM datanets d ORDER BY d.id")  # noqa: S608
LOCK_DATANET = text(
    "SELECT id, last_record_id, index_epoch FROM datanets WHERE id = :id FOR NO KEY UPDATE"
)
# The ingest transaction's lock also asks for custom plans (transaction-scoped): the driver
# reuses prepared statements, and a generic plan for FIND_LIVE_HASHES picked while the
# table's statistics are stale (right after a large import) scans the whole datanet.
LOCK_DATANET_FOR_INGEST = text(
    """
    SELECT id, last_record_id, index_epoch,
           set_config('plan_cache_mode', 'force_custom_plan', true) AS plan_cache_mode
    FROM datanets WHERE id = :id FOR NO KEY UPDATE
    """
)
SET_LAST_RECORD = text("UPDATE datanets SET last_record_id = :last_record_id WHERE id = :id")
BUMP_INDEX_EPOCH = text(
    "UPDATE datanets SET index_epoch = index_epoch + 1 WHERE id = :id RETURNING index_epoch"
)

# Counting stops at the limit (`cap`): all the rate limit needs to know is how many of the
# `cap` allowed slots are used, and an uncapped count walks every row of the window (a
# million rows for a bulk import a minute).
COUNT_RECENT = text(
    """
    SELECT count(*) FROM (
        SELECT 1 FROM contributions
        WHERE datanet_id = :datanet_id AND contributor_account_id = :contributor
          AND created_at > now() - make_interval(secs => :window_s)
        LIMIT :cap
    ) AS recent
    """
)
# What a chunk needs before it is decided, in one round trip: which of its content hashes a
# live record of the datanet already holds (one probe of the live-content unique index per
# hash: LATERAL ... LIMIT 1 pins that plan, where `content_hash = ANY(...)` with statistics
# gone stale during a large import scanned every live row of the datanet), and `:n` new
# record ids (the identity sequence by name: a constant regclass costs one nextval per id,
# where nextval(pg_get_serial_sequence(...)) looked the sequence up again for every row).
LOOKUP_CHUNK = text(
    """
    WITH found AS (
        SELECT h.content_hash, c.id
        FROM unnest(CAST(:hashes AS bytea[])) AS h(content_hash)
        CROSS JOIN LATERAL (
            SELECT id FROM contributions
            WHERE datanet_id = :datanet_id AND content_hash = h.content_hash
              AND status IN ('accepted', 'pending', 'flagged')
            LIMIT 1
        ) AS c
    )
    SELECT ARRAY(SELECT content_hash FROM found ORDER BY id) AS hashes,
           ARRAY(SELECT id FROM found ORDER BY id) AS holders,
           ARRAY(SELECT nextval('contributions_id_seq'::regclass)
                 FROM generate_series(1, :n)) AS ids
    """
)
INSERT_CONTRIBUTIONS = text(
    """
    INSERT INTO contributions (
        id, datanet_id, contributor_account_id, kind, text, prompt, completion, metadata,
        content_hash, minhash, token_count, status, reason, detail, duplicate_of,
        near_duplicate_of
    )
    SELECT u.id, :datanet_id, :contributor, u.kind, u.text, u.prompt, u.completion,
           CAST(u.meta AS jsonb), u.h, u.mh, u.tok, u.status, u.reason, u.detail, u.dup,
           u.near
    FROM unnest(
        CAST(:ids AS bigint[]), CAST(:kinds AS text[]), CAST(:texts AS text[]),
        CAST(:prompts AS text[]), CAST(:completions AS text[]), CAST(:metas AS text[]),
        CAST(:hashes AS bytea[]), CAST(:minhashes AS bytea[]), CAST(:tokens AS integer[]),
        CAST(:statuses AS text[]), CAST(:reasons AS text[]), CAST(:details AS text[]),
        CAST(:dups AS bigint[]), CAST(:nears AS bigint[])
    ) AS u(id, kind, text, prompt, completion, meta, h, mh, tok, status, reason, detail, dup,
           near)
    """
)
CONTRIBUTIONS_TABLE = "contributions"
# The columns a bulk write COPYs, in `NewRow.copy_tuple` order (COPY is the fastest way in;
# the constraints, triggers and the live-content unique index apply to it as to INSERT).
CONTRIBUTION_COPY_COLUMNS = (
    "id",
    "datanet_id",
    "contributor_account_id",
    "kind",
    "text",
    "prompt",
    "completion",
    "metadata",
    "content_hash",
    "minhash",
    "token_count",
    "status",
    "reason",
    "detail",
    "duplicate_of",
    "near_duplicate_of",
)
LOAD_SIGNATURES = text(
    """
    SELECT id, minhash FROM contributions
    WHERE datanet_id = :datanet_id AND id > :after AND status IN ('accepted', 'pending')
      AND minhash IS NOT NULL
    ORDER BY id
    """
)
MAX_RECORD_ID = text("SELECT coalesce(max(id), 0) FROM contributions WHERE datanet_id = :id")

_RECORD_COLUMNS = """
    id, datanet_id, contributor_account_id, kind, status, content_hash, token_count,
    created_at, text, prompt, completion, metadata::text AS metadata, reason, detail,
    duplicate_of, near_duplicate_of
"""
SELECT_RECORD = text(f"SELECT {_RECORD_COLUMNS} FROM contributions WHERE id = :id")  # noqa: S608
SELECT_RECORD_FOR_UPDATE = text(
    f"SELECT {_RECORD_COLUMNS}, minhash FROM contributions WHERE id = :id FOR UPDATE"  # noqa: S608
)
SELECT_PENDING = text(
    f"""
    SELECT {_RECORD_COLUMNS} FROM contributions
    WHERE datanet_id = :datanet_id AND status IN ('pending', 'flagged')
    ORDER BY id
    LIMIT :limit
    """  # noqa: S608
)
SELECT_RECORDS_OF = text(
    f"""
    SELECT {_RECORD_COLUMNS} FROM contributions
    WHERE contributor_account_id = :contributor
      AND (CAST(:datanet_id AS bigint) IS NULL OR datanet_id = CAST(:datanet_id AS bigint))
    ORDER BY id
    LIMIT :limit
    """  # noqa: S608
)
UPDATE_RECORD_STATUS = text(
    """
    UPDATE contributions SET status = :status, reason = :reason, detail = :detail,
                             decided_at = now()
    WHERE id = :id
    """
)
INSERT_DECISION = text(
    """
    INSERT INTO curator_decisions
        (record_id, datanet_id, curator_account_id, approve, from_status, to_status, reason)
    VALUES (:record_id, :datanet_id, :curator, :approve, :from_status, :to_status, :reason)
    RETURNING id, decided_at
    """
)
SELECT_DECISIONS = text(
    """
    SELECT id, record_id, datanet_id, curator_account_id, approve, from_status, to_status,
           reason, decided_at
    FROM curator_decisions WHERE record_id = :record_id ORDER BY id
    """
)

SELECT_ACCEPTED = text(
    """
    SELECT id, content_hash, token_count FROM contributions
    WHERE datanet_id = :datanet_id AND status = 'accepted'
    ORDER BY id
    """
)
NEXT_SNAPSHOT_SEQ = text(
    "SELECT coalesce(max(seq), 0) + 1 FROM snapshots WHERE datanet_id = :datanet_id"
)
_SNAPSHOT_COLUMNS = "id, datanet_id, seq, root, record_count, token_count, created_at"
SELECT_SNAPSHOT = text(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE id = :id")  # noqa: S608
SELECT_SNAPSHOTS = text(
    f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE datanet_id = :datanet_id "  # noqa: S608
    "ORDER BY seq"
)
INSERT_SNAPSHOT = text(
    """
    INSERT INTO snapshots (id, datanet_id, seq, root, record_count, token_count)
    VALUES (:id, :datanet_id, :seq, :root, :record_count, :token_count)
    RETURNING created_at
    """
)
# The same set and order as SELECT_ACCEPTED read in the same transaction (the datanet's row
# lock, which every status change takes, is held), written without a round trip of arrays.
INSERT_SNAPSHOT_RECORDS_FROM_ACCEPTED = text(
    """
    INSERT INTO snapshot_records (snapshot_id, position, record_id, record_hash)
    SELECT :snapshot_id, row_number() OVER (ORDER BY id) - 1, id, content_hash
    FROM contributions
    WHERE datanet_id = :datanet_id AND status = 'accepted'
    """
)
INSERT_SNAPSHOT_LEVELS = text(
    """
    INSERT INTO snapshot_levels (snapshot_id, level, nodes)
    SELECT :snapshot_id, u.level, u.nodes
    FROM unnest(CAST(:levels AS integer[]), CAST(:nodes AS bytea[])) AS u(level, nodes)
    """
)
# A window of WINDOW nodes of each stored level (nodes are 32 bytes; substring is 1-based).
SELECT_SNAPSHOT_LEVEL_WINDOWS = text(
    """
    SELECT l.level, substring(l.nodes FROM w.start * 32 + 1 FOR 32 * :window) AS nodes
    FROM unnest(CAST(:levels AS integer[]), CAST(:starts AS integer[])) AS w(level, start)
    JOIN snapshot_levels l ON l.snapshot_id = :snapshot_id AND l.level = w.level
    """
)
SELECT_SNAPSHOT_RECORD_POSITION = text(
    """
    SELECT position, record_hash FROM snapshot_records
    WHERE snapshot_id = :snapshot_id AND record_id = :record_id
    """
)
SELECT_SNAPSHOT_LEAF_WINDOW = text(
    """
    SELECT record_hash FROM snapshot_records
    WHERE snapshot_id = :snapshot_id AND position >= :start AND position < :stop
    ORDER BY position
    """
)
SELECT_SNAPSHOT_RECORDS = text(
    """
    SELECT position, record_id, record_hash FROM snapshot_records
    WHERE snapshot_id = :snapshot_id ORDER BY position
    """
)

SELECT_SNAPSHOT_CONTENTS = text(
    """
    SELECT r.position, r.record_id, r.record_hash, c.contributor_account_id, c.text, c.prompt,
           c.completion
    FROM snapshot_records r JOIN contributions c ON c.id = r.record_id
    WHERE r.snapshot_id = :snapshot_id ORDER BY r.position
    """
)
SELECT_SNAPSHOT_CONTRIBUTORS = text(
    """
    SELECT c.contributor_account_id, count(*) AS records
    FROM snapshot_records r JOIN contributions c ON c.id = r.record_id
    WHERE r.snapshot_id = :snapshot_id
    GROUP BY c.contributor_account_id ORDER BY c.contributor_account_id
    """
)


def sqlstate(e: DBAPIError) -> str | None:
    """The PostgreSQL error code behind a SQLAlchemy error (asyncpg driver)."""
    for err in (e.orig, getattr(e.orig, "__cause__", None)):
        code = getattr(err, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def _ts(v: Any) -> str:
    return v.isoformat() if v is not None else ""


def row_to_datanet(row: Any) -> Datanet:
    return Datanet(
        id=row.id,
        name=row.name,
        owner_account_id=row.owner_account_id,
        licence=row.licence,
        acceptance_mode=row.acceptance_mode,
        description=row.description,
        policy=msgspec.json.decode(row.policy, type=QualityPolicy),
        curators=list(row.curators),
        created_at=_ts(row.created_at),
    )


def row_to_record(row: Any) -> StoredRecord:
    return StoredRecord(
        id=row.id,
        datanet_id=row.datanet_id,
        contributor_account_id=row.contributor_account_id,
        kind=row.kind,
        status=row.status,
        content_hash=bytes(row.content_hash).hex(),
        token_count=row.token_count,
        created_at=_ts(row.created_at),
        text=row.text,
        prompt=row.prompt,
        completion=row.completion,
        metadata=msgspec.json.decode(row.metadata) if row.metadata is not None else None,
        reason=row.reason,
        detail=row.detail,
        duplicate_of=row.duplicate_of,
        near_duplicate_of=row.near_duplicate_of,
    )


def row_to_decision(row: Any, decided_at: Any = None) -> Decision:
    return Decision(
        id=row.id,
        record_id=row.record_id,
        datanet_id=row.datanet_id,
        curator_account_id=row.curator_account_id,
        approve=row.approve,
        from_status=row.from_status,
        to_status=row.to_status,
        reason=row.reason,
        decided_at=_ts(decided_at if decided_at is not None else row.decided_at),
    )


def row_to_snapshot(row: Any) -> Snapshot:
    return Snapshot(
        id=row.id,
        datanet_id=row.datanet_id,
        seq=row.seq,
        root=bytes(row.root).hex(),
        record_count=row.record_count,
        token_count=row.token_count,
        created_at=_ts(row.created_at),
    )


class NewRow(msgspec.Struct, gc=False):
    """One contributions row to insert."""

    id: int
    kind: str
    text: str | None
    prompt: str | None
    completion: str | None
    metadata: str | None
    content_hash: bytes
    minhash: bytes | None
    token_count: int
    status: str
    reason: str | None = None
    detail: str | None = None
    duplicate_of: int | None = None
    near_duplicate_of: int | None = None


def copy_tuples(datanet_id: int, contributor: int, rows: Sequence[NewRow]) -> list[tuple[Any, ...]]:
    """The rows as `CONTRIBUTION_COPY_COLUMNS` tuples."""
    return [
        (
            r.id,
            datanet_id,
            contributor,
            r.kind,
            r.text,
            r.prompt,
            r.completion,
            r.metadata,
            r.content_hash,
            r.minhash,
            r.token_count,
            r.status,
            r.reason,
            r.detail,
            r.duplicate_of,
            r.near_duplicate_of,
        )
        for r in rows
    ]


def insert_params(datanet_id: int, contributor: int, rows: Sequence[NewRow]) -> dict[str, Any]:
    return {
        "datanet_id": datanet_id,
        "contributor": contributor,
        "ids": [r.id for r in rows],
        "kinds": [r.kind for r in rows],
        "texts": [r.text for r in rows],
        "prompts": [r.prompt for r in rows],
        "completions": [r.completion for r in rows],
        "metas": [r.metadata for r in rows],
        "hashes": [r.content_hash for r in rows],
        "minhashes": [r.minhash for r in rows],
        "tokens": [r.token_count for r in rows],
        "statuses": [r.status for r in rows],
        "reasons": [r.reason for r in rows],
        "details": [r.detail for r in rows],
        "dups": [r.duplicate_of for r in rows],
        "nears": [r.near_duplicate_of for r in rows],
    }
