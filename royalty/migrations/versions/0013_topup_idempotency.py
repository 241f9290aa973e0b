"""Credit top-ups are idempotent by key; dashboard sessions are kept server-side.

`topup_requests` (metering): one row per `Idempotency-Key` of a credit top-up, written in the
same transaction as the top-up's ledger transaction (`txn_id` and `available` are set before
that transaction commits, so a committed row always has them); rows older than the retention
(`metering.ledger.book.TOPUP_KEY_RETENTION`) are swept. `dashboard_sessions` (gateway): a
dashboard sign-in, by the SHA-256 digest of its session id, tied to the key it was opened with.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE topup_requests (
            idempotency_key text PRIMARY KEY
                CHECK (length(idempotency_key) BETWEEN 1 AND 255),
            request_sha256  bytea NOT NULL,
            account_id      bigint NOT NULL REFERENCES accounts(id),
            amount          bigint NOT NULL CHECK (amount > 0),
            txn_id          bigint REFERENCES ledger_transactions(id),
            available       bigint,
            created_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX topup_requests_created ON topup_requests (created_at)")
    op.execute(
        """
        CREATE TABLE dashboard_sessions (
            session_sha256  bytea PRIMARY KEY,
            key_id          bigint NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
            created_at      timestamptz NOT NULL DEFAULT now(),
            seen_at         timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX dashboard_sessions_key ON dashboard_sessions (key_id)")
    op.execute("CREATE INDEX dashboard_sessions_seen ON dashboard_sessions (seen_at)")


def downgrade() -> None:
    op.execute("DROP TABLE dashboard_sessions")
    op.execute("DROP TABLE topup_requests")
