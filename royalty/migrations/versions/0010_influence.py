"""Gradient influence: the job queue and its results (attribution's tables).

`influence_jobs` is a Postgres job queue (claimed with FOR UPDATE SKIP LOCKED, leased with
`locked_until`); it is the only place prompt and output text are kept, and only until the
job finishes (or the configured retention passes). `influence_results` keeps what remains
after: method versions, top records with scores, refined weights, the adjustment posted.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE influence_jobs (
            request_id text PRIMARY KEY,
            adapter text NOT NULL,
            account_id bigint NOT NULL,
            month date NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            state text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'done', 'failed', 'expired')),
            attempts integer NOT NULL DEFAULT 0,
            run_after timestamptz NOT NULL DEFAULT now(),
            locked_by text,
            locked_until timestamptz,
            last_error text,
            note text,
            attribution jsonb,
            prompt jsonb,
            output text,
            text_expires_at timestamptz,
            finished_at timestamptz,
            CHECK ((state = 'running') = (locked_by IS NOT NULL))
        )
        """
    )
    # What CLAIM scans: queued jobs due now, and running jobs whose lease ran out.
    op.execute(
        "CREATE INDEX influence_jobs_due ON influence_jobs (run_after) WHERE state = 'queued'"
    )
    op.execute(
        "CREATE INDEX influence_jobs_leased ON influence_jobs (locked_until) "
        "WHERE state = 'running'"
    )
    # What the retention sweep scans: rows that still hold text.
    op.execute(
        "CREATE INDEX influence_jobs_text ON influence_jobs (text_expires_at) "
        "WHERE prompt IS NOT NULL OR output IS NOT NULL"
    )
    op.execute(
        """
        CREATE TABLE influence_results (
            request_id text PRIMARY KEY
                REFERENCES influence_jobs (request_id) ON DELETE CASCADE,
            adapter text NOT NULL,
            method text NOT NULL,
            weights_version text NOT NULL,
            refined_method text NOT NULL,
            top_records jsonb NOT NULL,
            contributors jsonb NOT NULL,
            seconds double precision NOT NULL,
            adjustment_txn bigint,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE influence_results")
    op.execute("DROP TABLE influence_jobs")
