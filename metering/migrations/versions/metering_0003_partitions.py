"""Usage events and per-event ledger rows partitioned by month.

Revision ID: metering_0003
Revises: metering_0002
Create Date: 2026-12-08
"""

revision = "metering_0003"
down_revision = "metering_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # placeholder: filled in by the change that needs it


def downgrade() -> None:
    pass
