"""Prompt enhancement: the prompts a task's model was conditioned on (``input.enhance_prompt``).

Revision ID: 0012
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("enhanced_prompts", sa.Text(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by copying the table (batch mode)
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("enhanced_prompts")
