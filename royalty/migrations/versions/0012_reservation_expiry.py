"""Budget reservations expire: a sweeper releases holds whose request never wrote usage.

Each reservation gets `expires_at` (the gateway sets it: the engine timeout plus the shipping
lag after it reserves; rows already held, and writers that do not set it, get 15 minutes).
The index serves the sweeper and the audit, which look only at expired rows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE budget_reservations ADD COLUMN expires_at timestamptz")
    op.execute("UPDATE budget_reservations SET expires_at = created_at + interval '15 minutes'")
    op.execute(
        """
        ALTER TABLE budget_reservations
            ALTER COLUMN expires_at SET DEFAULT now() + interval '15 minutes',
            ALTER COLUMN expires_at SET NOT NULL
        """
    )
    op.execute("CREATE INDEX budget_reservations_expires ON budget_reservations (expires_at)")


def downgrade() -> None:
    op.execute("DROP INDEX budget_reservations_expires")
    op.execute("ALTER TABLE budget_reservations DROP COLUMN expires_at")
