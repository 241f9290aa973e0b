"""Per-response attribution on usage events (metering owns usage_events; the object is
attribution's, carried with the usage record through the durable log).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE usage_events ADD COLUMN attribution jsonb")
    # "Which responses credited my records": containment queries on the contributors list.
    op.execute(
        "CREATE INDEX usage_events_attribution ON usage_events "
        "USING gin ((attribution -> 'contributors') jsonb_path_ops)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX usage_events_attribution")
    op.execute("ALTER TABLE usage_events DROP COLUMN attribution")
