"""Rate limits shared by gateway processes: one counter per key, kind and clock minute.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24

`gateway.ratelimit.SharedRateLimiter` leases slices of a key's per-minute budget with one
`INSERT ... ON CONFLICT DO UPDATE ... RETURNING` on this table (`ADD_TO_WINDOW`), so a request
costs a round trip only once per slice. `window_start` is the minute number (Unix seconds //
60). The table is UNLOGGED: counters live for a minute or two, and after a crash of
PostgreSQL (which empties unlogged tables) the worst case is one minute's budget admitted
twice. No foreign key to `api_keys`: the row is written on the admission path and swept by
`window_start` (index) a couple of minutes later.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE UNLOGGED TABLE rate_limit_windows (
            key_id          bigint NOT NULL,
            kind            text NOT NULL CHECK (kind IN ('requests', 'tokens')),
            window_start    bigint NOT NULL,
            used            bigint NOT NULL CHECK (used >= 0),
            PRIMARY KEY (key_id, kind, window_start)
        )
        """
    )
    op.execute("CREATE INDEX rate_limit_windows_by_window ON rate_limit_windows (window_start)")


def downgrade() -> None:
    op.execute("DROP TABLE rate_limit_windows")
