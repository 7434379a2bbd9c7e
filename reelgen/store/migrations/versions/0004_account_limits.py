"""Per-account rate limits set by the operator (NULL = the server's default).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_limits",
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("max_active_tasks", sa.Integer(), nullable=True),
        sa.CheckConstraint("requests_per_minute >= 0", name="ck_account_limits_rpm_nonnegative"),
        sa.CheckConstraint("max_active_tasks >= 0", name="ck_account_limits_active_nonnegative"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_account_limits_account_id_accounts"),
        sa.PrimaryKeyConstraint("account_id", name="pk_account_limits"),
    )


def downgrade() -> None:
    op.drop_table("account_limits")
