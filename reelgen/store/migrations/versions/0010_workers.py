"""Workers and their state (``loading`` while the engine loads and warms up, ``ready`` once claiming),
for ``/readyz``.

Revision ID: 0010
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("profile", sa.String(100), nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('loading', 'ready')", name="ck_workers_state_known"),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
    )
    op.create_index("ix_workers_profile", "workers", ["profile"])


def downgrade() -> None:
    op.drop_index("ix_workers_profile", table_name="workers")
    op.drop_table("workers")
