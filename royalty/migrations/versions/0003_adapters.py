"""Adapters and lineage (attribution): the adapter registry and each adapter's training records.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An adapter is trained on exactly one snapshot; its lineage (records in training order,
    # hyperparameters, metrics) is the lineage.json the factory wrote, kept here verbatim so
    # that it outlives the files. A name is served by at most one active adapter; retired
    # rows stay as history (usage events name adapters by name and time).
    op.execute(
        """
        CREATE TABLE adapters (
            id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name                text NOT NULL,
            base_model          text NOT NULL,
            base_weights_sha256 text NOT NULL,
            owner_account_id    bigint NOT NULL REFERENCES accounts(id),
            datanet_id          bigint NOT NULL REFERENCES datanets(id),
            snapshot_id         text NOT NULL REFERENCES snapshots(id),
            path                text NOT NULL,
            weights_sha256      text NOT NULL,
            lineage_sha256      text NOT NULL,
            lineage             jsonb NOT NULL,
            record_count        integer NOT NULL CHECK (record_count > 0),
            -- list prices placeholder (micro-credits per million tokens); metering's
            -- versioned prices take precedence once set
            price_input_micros  bigint CHECK (price_input_micros >= 0),
            price_output_micros bigint CHECK (price_output_micros >= 0),
            metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
            status              text NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'retired')),
            created_at          timestamptz NOT NULL DEFAULT now(),
            retired_at          timestamptz
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX adapters_active_name ON adapters (name) WHERE status = 'active'"
    )
    op.execute("CREATE INDEX adapters_snapshot ON adapters (snapshot_id)")
    op.execute("CREATE INDEX adapters_owner ON adapters (owner_account_id)")


def downgrade() -> None:
    op.execute("DROP TABLE adapters")
