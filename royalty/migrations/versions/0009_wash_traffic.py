"""Anti-gaming: wash-traffic holds and per-record penalties (metering's tables).

Also: the deferred check that every ledger transaction balances runs once per ledger
transaction and statement instead of once per entry (the same check at COMMIT; a batch of k
entries cost k² row reads, 150 ms a COMMIT for a 20,000-event posting batch).

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


# Balanced transactions, checked at COMMIT by a deferred row trigger: every entry fires it,
# but the sum of a ledger transaction's entries is computed once per ledger transaction per
# statement that fires the checks (COMMIT, or SET CONSTRAINTS ... IMMEDIATE). The key holds
# the statement's start time, so entries added by a later statement are checked again.
CHECK_BALANCED_ONCE = """
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
    checked text := NEW.txn_id::text || '@' || statement_timestamp()::text;
BEGIN
    IF current_setting('royalty.balanced_txn', true) = checked THEN
        RETURN NULL;
    END IF;
    SELECT sum(amount) INTO total FROM ledger_entries WHERE txn_id = NEW.txn_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % is unbalanced by %', NEW.txn_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM set_config('royalty.balanced_txn', checked, true);
    RETURN NULL;
END $$
"""
CHECK_BALANCED_EVERY_ROW = """
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE total numeric;
BEGIN
    SELECT sum(amount) INTO total FROM ledger_entries WHERE txn_id = NEW.txn_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % is unbalanced by %', NEW.txn_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.execute(CHECK_BALANCED_ONCE)
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
    op.execute(CHECK_BALANCED_EVERY_ROW)
    op.execute("DROP TABLE record_penalties")
    op.execute("DROP TABLE held_events")
