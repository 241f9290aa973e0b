"""Snapshot Merkle levels, so an inclusion proof costs O(log n) instead of O(n).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

Publishing a snapshot stores every fourth level of its Merkle tree above the leaves (levels
4, 8, 12, ...), each level as one bytea of its 32-byte nodes in order. A proof reads a window
of 16 nodes per stored level (plus 16 leaves) and hashes at most 15 nodes per window; see
`attribution.snapshots`. `STORAGE EXTERNAL` keeps the values uncompressed (hashes do not
compress), so Postgres reads a window with `substring` without detoasting the whole level.
Snapshots published before this revision have no levels; their proofs fall back to hashing
the whole tree.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE snapshot_levels (
            snapshot_id     text NOT NULL REFERENCES snapshots(id),
            level           integer NOT NULL CHECK (level > 0),
            nodes           bytea NOT NULL CHECK (length(nodes) % 32 = 0),
            PRIMARY KEY (snapshot_id, level)
        )
        """
    )
    op.execute("ALTER TABLE snapshot_levels ALTER COLUMN nodes SET STORAGE EXTERNAL")
    # snapshots never change: the same append-only rule as snapshots and snapshot_records
    op.execute(
        "CREATE TRIGGER snapshot_levels_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON snapshot_levels FOR EACH STATEMENT EXECUTE FUNCTION attribution_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE snapshot_levels")
