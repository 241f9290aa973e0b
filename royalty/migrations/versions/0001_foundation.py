"""Foundation: accounts and API keys (gateway), usage events (metering).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # gateway: who may call, and with what rights. Keys are stored only as SHA-256 digests:
    # they are 256-bit random tokens, so a fast hash is not brute-forceable.
    op.execute(
        """
        CREATE TABLE accounts (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name        text NOT NULL UNIQUE,
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE api_keys (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            account_id      bigint NOT NULL REFERENCES accounts(id),
            key_sha256      bytea NOT NULL UNIQUE,
            prefix          text NOT NULL,
            scopes          text[] NOT NULL,
            rpm_limit       integer,
            tpm_limit       integer,
            created_at      timestamptz NOT NULL DEFAULT now(),
            revoked_at      timestamptz,
            CONSTRAINT api_keys_scopes_nonempty CHECK (cardinality(scopes) > 0)
        )
        """
    )
    # metering: one row per request id; the primary key makes shipping idempotent.
    op.execute(
        """
        CREATE TABLE usage_events (
            request_id          text PRIMARY KEY,
            account_id          bigint NOT NULL,
            key_id              bigint NOT NULL,
            endpoint            text NOT NULL,
            model               text NOT NULL,
            base_model          text NOT NULL,
            adapter             text,
            status              text NOT NULL
                CHECK (status IN ('ok', 'error', 'client_cancelled')),
            http_status         integer NOT NULL,
            prompt_tokens       integer NOT NULL CHECK (prompt_tokens >= 0),
            completion_tokens   integer NOT NULL CHECK (completion_tokens >= 0),
            started_at          timestamptz NOT NULL,
            total_ms            double precision NOT NULL,
            ttft_ms             double precision,
            output_sha256       text,
            error_type          text,
            engine              text,
            recorded_at         timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX usage_events_account_started ON usage_events (account_id, started_at)")
    op.execute("CREATE INDEX usage_events_model_started ON usage_events (model, started_at)")


def downgrade() -> None:
    op.execute("DROP TABLE usage_events")
    op.execute("DROP TABLE api_keys")
    op.execute("DROP TABLE accounts")
