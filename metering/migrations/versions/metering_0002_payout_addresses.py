"""Payout addresses and published month roots (contributors' self-service payouts).

Revision ID: metering_0002
Revises: metering_0001
Create Date: 2026-12-08
"""

revision = "metering_0002"
down_revision = "metering_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # placeholder: filled in by the change that needs it


def downgrade() -> None:
    pass
