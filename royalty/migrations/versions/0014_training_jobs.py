"""Adapter training jobs: a Postgres job queue like the influence queue (attribution's table).

`training_jobs` holds one row per `POST /v1/adapters`: the request (datanet, adapter name,
owner, snapshot, steps, replace), its state (claimed with FOR UPDATE SKIP LOCKED, leased with
`locked_until`), attempts, progress, the last error, and once trained the registered adapter
(`result`, `lineage_sha256`). An `Idempotency-Key` maps to at most one job, bound to the
request's fingerprint (`request_sha256`). See `attribution/training_jobs.py`.

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
    op.execute(
        """
        CREATE TABLE training_jobs (
            id text PRIMARY KEY CHECK (id ~ '^ftjob-[0-9a-f]{16}$'),
            idempotency_key text UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
            request_sha256 bytea NOT NULL,
            datanet text NOT NULL,
            adapter text NOT NULL,
            owner text NOT NULL,
            snapshot_id text,
            steps integer CHECK (steps > 0),
            replace boolean NOT NULL DEFAULT false,
            state text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            run_after timestamptz NOT NULL DEFAULT now(),
            locked_by text,
            locked_until timestamptz,
            step integer NOT NULL DEFAULT 0,
            loss double precision,
            error text,
            error_type text,
            result jsonb,
            lineage_sha256 text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            CHECK ((state = 'running') = (locked_by IS NOT NULL)),
            CHECK ((state = 'succeeded') = (result IS NOT NULL))
        )
        """
    )
    # What CLAIM scans: queued jobs due now, and running jobs whose lease ran out.
    op.execute("CREATE INDEX training_jobs_due ON training_jobs (run_after) WHERE state = 'queued'")
    op.execute(
        "CREATE INDEX training_jobs_leased ON training_jobs (locked_until) WHERE state = 'running'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE training_jobs")
