"""The ``/v1/videos`` door's view of tasks: the OpenAI model id and size asked for, the video a
remix came from, and when the stored result was deleted (``DELETE /v1/videos/{id}``).

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column("task_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(100), nullable=True),
        sa.Column("size", sa.String(16), nullable=True),
        sa.Column("remixed_from", sa.String(32), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_videos_task_id_tasks"),
        sa.PrimaryKeyConstraint("task_id", name="pk_videos"),
    )


def downgrade() -> None:
    op.drop_table("videos")
