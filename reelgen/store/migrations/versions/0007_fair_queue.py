"""Fair queueing: per-account weight, tier and virtual time; each task's expected GPU time, tier and start.

Revision ID: 0007
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_queue",
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("weight", sa.Integer(), server_default="1", nullable=False),
        sa.Column("tier", sa.Integer(), server_default="1", nullable=False),
        sa.Column("vtime", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_start", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("weight >= 1 AND weight <= 1000", name="ck_account_queue_weight_range"),
        sa.CheckConstraint("tier >= 0 AND tier <= 2", name="ck_account_queue_tier_known"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_account_queue_account_id_accounts"),
        sa.PrimaryKeyConstraint("account_id", name="pk_account_queue"),
    )
    op.create_index("ix_account_queue_last_start", "account_queue", ["last_start"])
    # every existing account joins the queue at virtual time 0; pending tasks start at 0, normal
    # tier, so they keep their first-in first-out order among themselves
    op.execute("INSERT INTO account_queue (account_id) SELECT id FROM accounts")
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("cost_us", sa.BigInteger(), server_default="1000000", nullable=False))
        batch.add_column(sa.Column("tier", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("vstart", sa.BigInteger(), server_default="0", nullable=False))
        batch.create_check_constraint("ck_tasks_cost_us_min", "cost_us >= 1000")
    op.create_index(
        "ix_tasks_pending_fair",
        "tasks",
        ["profile", "tier", "vstart", "created_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_pending_fair", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint("ck_tasks_cost_us_min", type_="check")
        batch.drop_column("vstart")
        batch.drop_column("tier")
        batch.drop_column("cost_us")
    op.drop_index("ix_account_queue_last_start", table_name="account_queue")
    op.drop_table("account_queue")
