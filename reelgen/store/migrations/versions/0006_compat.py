"""VicSee/Kling compatibility: presigned upload slots, upload use, and Kling's ``external_task_id``.

Revision ID: 0006
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("external_task_id", sa.String(128), nullable=True))
    op.create_index("ix_tasks_account_id_external_task_id", "tasks", ["account_id", "external_task_id"], unique=True)
    op.add_column("uploads", sa.Column("used_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_uploads_used_at_created_at", "uploads", ["used_at", "created_at"])
    op.create_table(
        "upload_slots",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("content_type", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_upload_slots_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_upload_slots"),
    )
    op.create_index("ix_upload_slots_expires_at", "upload_slots", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_upload_slots_expires_at", table_name="upload_slots")
    op.drop_table("upload_slots")
    op.drop_index("ix_uploads_used_at_created_at", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("used_at")
    op.drop_index("ix_tasks_account_id_external_task_id", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("external_task_id")
