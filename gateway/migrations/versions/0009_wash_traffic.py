"""Anti-gaming: wash-traffic holds and per-record penalties (metering's tables).

`held_events`: each usage event whose earnings a wash-traffic heuristic put on hold at close,
once (the primary key: two heuristics, or a second run of the close, never hold an event
twice), with the heuristic that fired and the `hold` transaction. `record_penalties`: a
curator's or admin's penalty on one training record (its future credits are withheld; the
open month's credits from it were reversed). Both are append-only like the ledger.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE held_events (
            event_id    text PRIMARY KEY,
            month       date NOT NULL,
            heuristic   text NOT NULL
                CHECK (heuristic IN ('dominant_payer', 'repeated_prompt', 'burst')),
            txn_id      bigint NOT NULL REFERENCES ledger_transactions(id)
        )
        """
    )
    op.execute("CREATE INDEX held_events_month ON held_events (month)")
    op.execute(
        """
        CREATE TABLE record_penalties (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            record_id       bigint NOT NULL UNIQUE,
            contributor_id  bigint NOT NULL REFERENCES accounts(id),
            reason          text NOT NULL CHECK (length(reason) > 0),
            created_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    for table in ("held_events", "record_penalties"):
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )


def downgrade() -> None:
    op.execute("DROP TABLE record_penalties")
    op.execute("DROP TABLE held_events")
