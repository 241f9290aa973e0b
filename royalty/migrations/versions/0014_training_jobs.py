"""Adapter training jobs: a Postgres job queue like the influence queue.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT 1")  # placeholder: filled in by the change that needs it


def downgrade() -> None:
    op.execute("SELECT 1")
