"""Dead letters: records that can never be stored, kept for operators to replay or discard.

`dead_letters` (owned by `core.deadletters`): one row per (queue, item key), the exact
serialized item in `payload` (bytea holds anything, NUL included), the error that rejected
it, and its resolution. A partial index keeps the count of letters waiting for an operator
(what the `royalty_dead_letters_pending` gauge reads) cheap however many were resolved.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE dead_letters (
            id bigserial PRIMARY KEY,
            queue text NOT NULL CHECK (queue IN ('usage', 'influence', 'posting')),
            item_key text NOT NULL,
            payload bytea NOT NULL,
            error text NOT NULL,
            sqlstate text,
            created_at timestamptz NOT NULL DEFAULT now(),
            state text NOT NULL DEFAULT 'dead'
                CHECK (state IN ('dead', 'replayed', 'discarded')),
            failures integer NOT NULL DEFAULT 1 CHECK (failures >= 1),
            resolved_at timestamptz,
            resolution text,
            UNIQUE (queue, item_key),
            CHECK ((state = 'dead') = (resolved_at IS NULL))
        )
        """
    )
    op.execute("CREATE INDEX dead_letters_dead ON dead_letters (queue) WHERE state = 'dead'")


def downgrade() -> None:
    op.execute("DROP TABLE dead_letters")
