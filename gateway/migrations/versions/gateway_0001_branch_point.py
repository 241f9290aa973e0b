"""gateway's own migration history starts here (a branch point: no schema change).

gateway owns `api_keys`, `rate_limit_windows` and `dashboard_sessions`; they were created by the shared base history (0001-0014 in
`royalty/migrations/versions`, frozen). From here on a change to one of gateway's tables is a
revision in this directory, on the branch labelled `gateway` (`down_revision` = this branch's
head; `depends_on` names a revision of another history the change needs). Every history
starts from 0014, the old single head, so a database an older release left at 0014 (or
earlier) upgrades to `heads` by running these branch points; see `royalty/migrations/env.py`.

Revision ID: gateway_0001
Revises: 0014
Create Date: 2026-12-08
"""

revision = "gateway_0001"
down_revision = "0014"
branch_labels = ("gateway",)
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
