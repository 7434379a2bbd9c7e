"""Initial schema: accounts, API keys, tasks, credit movements and their ledger entries.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        _ts("created_at"),
        sa.Column("available", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reserved", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("granted", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("captured", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("available >= 0", name="ck_accounts_available_nonnegative"),
        sa.CheckConstraint("reserved >= 0", name="ck_accounts_reserved_nonnegative"),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        _ts("expires_at", nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_api_keys_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("digest", name="uq_api_keys_digest"),
    )
    op.create_index("ix_api_keys_account_id", "api_keys", ["account_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("profile", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=True),
        _ts("lease_expires_at", nullable=True),
        _ts("heartbeat_at", nullable=True),
        sa.Column("progress", sa.Integer(), server_default="0", nullable=False),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("completed_at", nullable=True),
        sa.Column("result_key", sa.String(500), nullable=True),
        sa.Column("result_duration", sa.Float(), nullable=True),
        sa.Column("result_has_audio", sa.Boolean(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')",
            name="ck_tasks_status_known",
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name="ck_tasks_progress_range"),
        sa.CheckConstraint("price > 0", name="ck_tasks_price_positive"),
        sa.CheckConstraint("max_attempts >= 1", name="ck_tasks_max_attempts_positive"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_tasks_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
    )
    op.create_index("ix_tasks_status_created_at", "tasks", ["status", "created_at"])
    op.create_index("ix_tasks_account_id_created_at", "tasks", ["account_id", "created_at"])
    op.create_table(
        "movements",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(32), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        sa.CheckConstraint("kind IN ('grant', 'reserve', 'capture', 'release')", name="ck_movements_kind_known"),
        sa.CheckConstraint("amount > 0", name="ck_movements_amount_positive"),
        sa.CheckConstraint(
            "(kind = 'grant' AND task_id IS NULL) OR (kind <> 'grant' AND task_id IS NOT NULL)",
            name="ck_movements_task_iff_hold",
        ),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_movements_account_id_accounts"),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name="fk_movements_task_id_tasks",
            deferrable=True,
            initially="DEFERRED",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_movements"),
        sa.UniqueConstraint("task_id", "kind", name="uq_movements_task_id_kind"),
    )
    op.create_index("ix_movements_account_id", "movements", ["account_id"])
    op.create_table(
        "ledger_entries",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("movement_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=True),
        sa.Column("bucket", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "bucket IN ('available', 'reserved', 'granted', 'captured')",
            name="ck_ledger_entries_bucket_known",
        ),
        sa.CheckConstraint("amount <> 0", name="ck_ledger_entries_amount_nonzero"),
        sa.ForeignKeyConstraint(["movement_id"], ["movements.id"], name="fk_ledger_entries_movement_id_movements"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_ledger_entries_account_id_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_entries"),
    )
    op.create_index("ix_ledger_entries_movement_id", "ledger_entries", ["movement_id"])
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id"])


def downgrade() -> None:
    op.drop_table("ledger_entries")
    op.drop_table("movements")
    op.drop_table("tasks")
    op.drop_table("api_keys")
    op.drop_table("accounts")
