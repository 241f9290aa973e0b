"""Usage events carry a keyed digest of the prompt: repeated prompts (wash traffic) can be
counted without keeping any prompt text.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE usage_events ADD COLUMN prompt_digest text")
    op.execute(
        "CREATE INDEX usage_events_prompt_digest ON usage_events (adapter, prompt_digest) "
        "WHERE prompt_digest IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX usage_events_prompt_digest")
    op.execute("ALTER TABLE usage_events DROP COLUMN prompt_digest")
