"""A persisted near-duplicate (LSH) index for datanet ingest.

Revision ID: attribution_0002
Revises: attribution_0001
Create Date: 2026-12-08
"""

revision = "attribution_0002"
down_revision = "attribution_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # placeholder: filled in by the change that needs it


def downgrade() -> None:
    pass
