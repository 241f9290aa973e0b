"""Stored Responses API objects (`store`, `previous_response_id`, `GET /v1/responses/{id}`).

Revision ID: gateway_0002
Revises: gateway_0001
Create Date: 2026-12-08
"""

revision = "gateway_0002"
down_revision = "gateway_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # placeholder: filled in by the change that needs it


def downgrade() -> None:
    pass
