"""Metering: prices, split policies, double-entry ledger, budgets, holds, monthly close.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

All money columns are bigint micro-credits (1 credit = 1,000,000). Ledger entries and
postings are append-only (a trigger refuses UPDATE and DELETE); every ledger transaction sums
to zero (a deferred constraint trigger checks it at COMMIT).
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Versioned, effective-dated prices. adapter '' = the base model itself (and the fallback
    # for an adapter without a price of its own). The row id is the price version.
    op.execute(
        """
        CREATE TABLE prices (
            id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            base_model          text NOT NULL,
            adapter             text NOT NULL DEFAULT '',
            input_micros_per_m  bigint NOT NULL CHECK (input_micros_per_m >= 0),
            output_micros_per_m bigint NOT NULL CHECK (output_micros_per_m >= 0),
            effective_from      timestamptz NOT NULL,
            created_at          timestamptz NOT NULL DEFAULT now(),
            UNIQUE (base_model, adapter, effective_from)
        )
        """
    )
    # Split policies in parts per million of the charge; adapter '' is the default policy.
    op.execute(
        """
        CREATE TABLE split_policies (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            adapter         text NOT NULL DEFAULT '',
            protocol_ppm    bigint NOT NULL CHECK (protocol_ppm >= 0),
            operator_ppm    bigint NOT NULL CHECK (operator_ppm >= 0),
            owner_ppm       bigint NOT NULL CHECK (owner_ppm >= 0),
            data_ppm        bigint NOT NULL CHECK (data_ppm >= 0),
            effective_from  timestamptz NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            CHECK (protocol_ppm + operator_ppm + owner_ppm + data_ppm = 1000000),
            UNIQUE (adapter, effective_from)
        )
        """
    )
    op.execute(
        """
        INSERT INTO split_policies
            (adapter, protocol_ppm, operator_ppm, owner_ppm, data_ppm, effective_from)
        VALUES ('', 50000, 250000, 200000, 500000, '2000-01-01T00:00:00Z')
        """
    )
    # Ledger accounts: one per (kind, owner). System kinds (operator, treasury, withheld,
    # external) have no owner. `held` is credit reserved by budgets and not yet posted.
    op.execute(
        """
        CREATE TABLE ledger_accounts (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind        text NOT NULL CHECK (kind IN ('consumer', 'contributor',
                            'adapter_owner', 'operator', 'treasury', 'withheld', 'external')),
            owner_id    bigint REFERENCES accounts(id),
            balance     bigint NOT NULL DEFAULT 0,
            version     bigint NOT NULL DEFAULT 0,
            held        bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
            CHECK ((owner_id IS NULL) = (kind IN ('operator', 'treasury', 'withheld', 'external'))),
            UNIQUE NULLS NOT DISTINCT (kind, owner_id)
        )
        """
    )
    op.execute(
        """
        INSERT INTO ledger_accounts (kind) VALUES
            ('operator'), ('treasury'), ('withheld'), ('external')
        """
    )
    op.execute(
        """
        CREATE TABLE ledger_months (
            month       date PRIMARY KEY CHECK (extract(day FROM month) = 1),
            closed_at   timestamptz NOT NULL DEFAULT now(),
            merkle_root bytea NOT NULL,
            leaf_count  integer NOT NULL,
            charges     bigint NOT NULL,
            payouts     bigint NOT NULL,
            fees        bigint NOT NULL,
            withheld    bigint NOT NULL,
            event_count bigint NOT NULL
        )
        """
    )
    op.execute(
        """
        CREATE TABLE ledger_transactions (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind        text NOT NULL CHECK (kind IN ('topup', 'usage', 'reversal', 'penalty', 'hold', 'adjustment')),
            reverses    bigint REFERENCES ledger_transactions(id),
            memo        text NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE ledger_entries (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            txn_id      bigint NOT NULL REFERENCES ledger_transactions(id),
            account_id  bigint NOT NULL REFERENCES ledger_accounts(id),
            month       date NOT NULL CHECK (extract(day FROM month) = 1),
            amount      bigint NOT NULL CHECK (amount <> 0)
        )
        """
    )
    op.execute("CREATE INDEX ledger_entries_txn ON ledger_entries (txn_id)")
    op.execute("CREATE INDEX ledger_entries_month_account ON ledger_entries (month, account_id)")
    op.execute("CREATE INDEX ledger_entries_account ON ledger_entries (account_id)")
    # One row per posted usage event: the idempotency key (primary key) and the per-event
    # breakdown (payee ledger accounts and amounts, which sum to `charge`). No foreign keys
    # on purpose: four per-row RI checks more than halved the posting rate; the poster writes
    # ids it read in the same transaction, and `metering.ledger.audit` checks them.
    op.execute(
        """
        CREATE TABLE usage_postings (
            event_id        text PRIMARY KEY,
            txn_id          bigint NOT NULL,
            month           date NOT NULL,
            event_day       date NOT NULL,
            payer_id        bigint NOT NULL,
            adapter         text NOT NULL,
            price_id        bigint,
            policy_id       bigint NOT NULL,
            charge          bigint NOT NULL CHECK (charge >= 0),
            payees          bigint[] NOT NULL,
            amounts         bigint[] NOT NULL,
            CHECK (cardinality(payees) = cardinality(amounts))
        )
        """
    )
    op.execute("CREATE INDEX usage_postings_month ON usage_postings (month)")
    # Later attribution (influence) re-splitting a posted event: the change per payee (sums to
    # zero), posted in the open month; seq numbers an event's successive adjustments.
    op.execute(
        """
        CREATE TABLE usage_adjustments (
            event_id    text NOT NULL,
            seq         integer NOT NULL CHECK (seq > 0),
            txn_id      bigint NOT NULL REFERENCES ledger_transactions(id),
            month       date NOT NULL,
            payees      bigint[] NOT NULL,
            amounts     bigint[] NOT NULL,
            PRIMARY KEY (event_id, seq),
            CHECK (cardinality(payees) = cardinality(amounts))
        )
        """
    )
    # Why credit went to `withheld` instead of its payee: readable by that payee.
    op.execute(
        """
        CREATE TABLE withheld_items (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            txn_id          bigint NOT NULL REFERENCES ledger_transactions(id),
            month           date NOT NULL,
            beneficiary_id  bigint NOT NULL REFERENCES ledger_accounts(id),
            amount          bigint NOT NULL CHECK (amount <> 0),
            reason          text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX withheld_items_beneficiary ON withheld_items (beneficiary_id)")
    op.execute(
        """
        CREATE TABLE penalties (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            contributor_id  bigint NOT NULL REFERENCES accounts(id),
            adapter         text NOT NULL DEFAULT '',
            reason          text NOT NULL CHECK (length(reason) > 0),
            created_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE statements (
            month           date NOT NULL REFERENCES ledger_months(month),
            payee           text NOT NULL,
            ledger_account  bigint NOT NULL REFERENCES ledger_accounts(id),
            amount          bigint NOT NULL CHECK (amount >= 0),
            leaf_index      integer NOT NULL,
            proof           jsonb NOT NULL,
            PRIMARY KEY (month, payee)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE budget_reservations (
            request_id      text PRIMARY KEY,
            account_id      bigint NOT NULL REFERENCES ledger_accounts(id),
            amount          bigint NOT NULL CHECK (amount >= 0),
            settled         boolean NOT NULL DEFAULT false,
            created_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Work queue of usage events not yet posted, filled by a statement trigger on
    # usage_events (only rows actually inserted: replays ON CONFLICT DO NOTHING add nothing).
    op.execute("CREATE TABLE usage_unposted (event_id text PRIMARY KEY)")
    op.execute("INSERT INTO usage_unposted SELECT request_id FROM usage_events")
    op.execute(
        """
        CREATE FUNCTION usage_events_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO usage_unposted SELECT request_id FROM new_events
            ON CONFLICT DO NOTHING;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER usage_events_enqueue AFTER INSERT ON usage_events
        REFERENCING NEW TABLE AS new_events
        FOR EACH STATEMENT EXECUTE FUNCTION usage_events_enqueue()
        """
    )
    # Append-only: history is corrected by reversing transactions, never edited.
    op.execute(
        """
        CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'restrict_violation';
        END $$
        """
    )
    for table in (
        "ledger_entries", "ledger_transactions", "usage_postings", "usage_adjustments",
        "withheld_items",
    ):  # fmt: skip
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )
    # A closed month's statements never change.
    op.execute(
        "CREATE TRIGGER statements_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON statements FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER ledger_months_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON ledger_months FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
    )
    # Balanced transactions, checked once per transaction at COMMIT.
    op.execute(
        """
        CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
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
    )
    op.execute(
        """
        CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER usage_events_enqueue ON usage_events")
    op.execute("DROP FUNCTION usage_events_enqueue()")
    for table in (
        "usage_unposted",
        "budget_reservations",
        "statements",
        "penalties",
        "withheld_items",
        "usage_adjustments",
        "usage_postings",
        "ledger_entries",
        "ledger_transactions",
        "ledger_months",
        "ledger_accounts",
        "split_policies",
        "prices",
    ):
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP FUNCTION ledger_refuse_change()")
    op.execute("DROP FUNCTION ledger_check_balanced()")
