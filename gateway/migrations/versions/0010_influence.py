"""Gradient influence: the job queue and its results (attribution's tables).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
