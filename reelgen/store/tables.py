"""The schema as SQLAlchemy Core tables, shared by SQLite and PostgreSQL.

The migrations in ``migrations/versions`` create exactly this schema (a test compares them).
Money is double entry: each row of ``movements`` (grant, reserve, capture, release) owns two
``ledger_entries`` that sum to zero; the ``accounts`` balance columns are a cache of those
entries, written in the same transaction as every movement.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

__all__ = [
    "BUCKETS",
    "MOVEMENT_KINDS",
    "QUEUE_TIERS",
    "TASK_STATUSES",
    "WORKER_STATES",
    "UTCDateTime",
    "account_limits",
    "account_queue",
    "accounts",
    "api_keys",
    "idempotency_keys",
    "ledger_entries",
    "metadata",
    "movements",
    "tasks",
    "upload_slots",
    "uploads",
    "videos",
    "webhook_deliveries",
    "webhook_endpoints",
    "workers",
]

TASK_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
MOVEMENT_KINDS = ("grant", "reserve", "capture", "release")
BUCKETS = ("available", "reserved", "granted", "captured")
WORKER_STATES = ("loading", "ready")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    Naive datetimes are refused on the way in. SQLite has no timezone type, so the value is stored
    as naive UTC text (fixed width, so text order is time order) and comes back UTC-aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Autoincrementing 64-bit keys; SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


accounts = Table(
    "accounts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # cached balances: always equal to the sums of this account's ledger entries (invariant I1)
    Column("available", BigInteger, nullable=False, server_default="0"),
    Column("reserved", BigInteger, nullable=False, server_default="0"),
    Column("granted", BigInteger, nullable=False, server_default="0"),
    Column("captured", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("available >= 0", name="available_nonnegative"),
    CheckConstraint("reserved >= 0", name="reserved_nonnegative"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),  # HMAC-SHA256(pepper, key), hex
    Column("prefix", String(16), nullable=False),  # for display: "sk-" and the next 5 characters
    Column("last4", String(4), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("model", String(100), nullable=False),
    Column("profile", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("input", Text, nullable=False),  # the request's ``input`` object as JSON text
    Column("prompt", Text, nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("seed", BigInteger, nullable=False),
    # fencing token: incremented by every claim; every write by a worker names the attempt it holds
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("failures", Integer, nullable=False, server_default="0"),  # crashed or expired attempts
    Column("max_attempts", Integer, nullable=False),
    Column("worker_id", String(200), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("heartbeat_at", UTCDateTime(), nullable=True),
    Column("progress", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("result_key", String(500), nullable=True),
    Column("result_duration", Float, nullable=True),
    Column("result_has_audio", Boolean, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    # model, mode, duration bucket and audio: the runs an ETA is learned from (migration 0002)
    Column("request_class", String(200), nullable=True),
    Column("callback_url", Text, nullable=True),  # where the end of the task is POSTed (migration 0003)
    # the fair queue (migration 0007, store.fair): expected GPU microseconds, the account's tier
    # when submitted (0 high, 1 normal, 2 batch) and the task's start in the account's virtual time
    Column("cost_us", BigInteger, nullable=False, server_default="1000000"),
    Column("tier", Integer, nullable=False, server_default="1"),
    Column("vstart", BigInteger, nullable=False, server_default="0"),
    # Kling's ``external_task_id``: the caller's own id of the task, unique per account (migration 0006)
    Column("external_task_id", String(128), nullable=True),
    # ``input.enhance_prompt``: the prompts the model was conditioned on, one per segment, as a JSON
    # list of strings; written with the result when the task completes (migration 0012)
    Column("enhanced_prompts", Text, nullable=True),
    CheckConstraint(_in("status", TASK_STATUSES), name="status_known"),
    CheckConstraint("progress >= 0 AND progress <= 100", name="progress_range"),
    CheckConstraint("price > 0", name="price_positive"),
    CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
    Index("ix_tasks_status_created_at", "status", "created_at"),
    Index("ix_tasks_account_id_created_at", "account_id", "created_at"),
    Index("ix_tasks_request_class_completed_at", "request_class", "completed_at"),
    # the fair queue (store.fair): pending tasks in claim order, per profile
    Index(
        "ix_tasks_pending_fair",
        "profile",
        "tier",
        "vstart",
        "created_at",
        "id",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    CheckConstraint("cost_us >= 1000", name="cost_us_min"),
    Index("ix_tasks_account_id_external_task_id", "account_id", "external_task_id", unique=True),
)

# An Idempotency-Key and the first response it got, written in the transaction that created the
# task and its hold (migration 0002). Keys are scoped per account and kept for 24 h.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),  # SHA-256 of the canonical JSON body, hex
    Column("task_id", String(32), nullable=True),
    Column("status_code", Integer, nullable=False),
    Column("response", Text, nullable=True),  # the ``data`` object answered, as JSON text
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
)

movements = Table(
    "movements",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    # deferred, so a caller may reserve before or after inserting the task in one transaction
    Column(
        "task_id",
        String(32),
        ForeignKey("tasks.id", deferrable=True, initially="DEFERRED"),
        nullable=True,
    ),
    Column("amount", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    CheckConstraint(_in("kind", MOVEMENT_KINDS), name="kind_known"),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint(
        "(kind = 'grant' AND task_id IS NULL) OR (kind <> 'grant' AND task_id IS NOT NULL)",
        name="task_iff_hold",
    ),
    # one reserve, at most one capture and at most one release per task: a retried finish is a no-op
    UniqueConstraint("task_id", "kind"),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("movement_id", BigInteger, ForeignKey("movements.id"), nullable=False, index=True),
    # NULL = the system side (where granted credits come from and captured credits go)
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=True, index=True),
    Column("bucket", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint(_in("bucket", BUCKETS), name="bucket_known"),
    CheckConstraint("amount <> 0", name="amount_nonzero"),
)

WEBHOOK_STATUSES = ("pending", "delivered", "failed")

# The webhook outbox (migration 0003): one row per task end with a callback_url, written in the
# transaction that ends the task; ``id`` is the stable ``webhook-id`` of every delivery attempt.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("task_id", String(32), ForeignKey("tasks.id"), nullable=False),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("url", Text, nullable=False),
    Column("event", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # the exact body sent (and signed) on every attempt
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("last_error", String(200), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    CheckConstraint(_in("status", WEBHOOK_STATUSES), name="status_known"),
    Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
)

# Failure state per (account, callback URL): disabled for a while after repeated failed deliveries.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("url_hash", String(64), primary_key=True),  # SHA-256 of the URL, hex
    Column("failed_deliveries", Integer, nullable=False, server_default="0"),
    Column("disabled_until", UTCDateTime(), nullable=True),
)

# Operator-set limits per account (migration 0004); NULL = the server's default, 0 = unlimited.
account_limits = Table(
    "account_limits",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("requests_per_minute", Integer, nullable=True),
    Column("max_active_tasks", Integer, nullable=True),
    CheckConstraint("requests_per_minute >= 0", name="rpm_nonnegative"),
    CheckConstraint("max_active_tasks >= 0", name="active_nonnegative"),
)

QUEUE_TIERS = ("high", "normal", "batch")

# The fair queue's bookkeeping per account (migration 0007, ``store.fair``): the operator's weight
# and tier, and the account's virtual time (where its next task starts: expected GPU microseconds
# divided by weight).
account_queue = Table(
    "account_queue",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("weight", Integer, nullable=False, server_default="1"),
    Column("tier", Integer, nullable=False, server_default="1"),  # index into QUEUE_TIERS
    Column("vtime", BigInteger, nullable=False, server_default="0"),
    # the virtual time at which its latest claimed task started (the queue's clock is the maximum)
    Column("last_start", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("weight >= 1 AND weight <= 1000", name="weight_range"),
    CheckConstraint("tier >= 0 AND tier <= 2", name="tier_known"),
    Index("ix_account_queue_last_start", "last_start"),
)

# Input images uploaded with ``POST /api/v1/upload`` (migration 0005); the bytes live in storage
# under ``key`` and are referenced from ``image_urls`` as ``reelgen-upload://<id>``.
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("key", String(500), nullable=False),
    Column("format", String(8), nullable=False),  # JPEG, PNG or WEBP
    Column("size", BigInteger, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # when a task first named it (migration 0006); never-used uploads are purged after the retention
    Column("used_at", UTCDateTime(), nullable=True),
    Index("ix_uploads_used_at_created_at", "used_at", "created_at"),
)

# Presigned uploads waiting for their bytes (migration 0006): ``POST /api/v1/upload`` with
# ``{contentType, sizeBytes}`` makes one; the signed ``PUT`` claims it (once) and stores the upload
# under the same id. Unclaimed slots past ``expires_at`` are purged with their (partial) object.
upload_slots = Table(
    "upload_slots",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("content_type", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
    Column("claimed_at", UTCDateTime(), nullable=True),
)

# The ``/v1/videos`` door's view of a task (migration 0008): the OpenAI ``model`` and ``size`` a
# video was created with (NULL for tasks submitted through ``/api/v1``), the video a remix came
# from, and when ``DELETE /v1/videos/{id}`` removed its stored result (the ledger keeps its entries).
videos = Table(
    "videos",
    metadata,
    Column("task_id", String(32), ForeignKey("tasks.id"), primary_key=True),
    Column("model", String(100), nullable=True),
    Column("size", String(16), nullable=True),
    Column("remixed_from", String(32), nullable=True),
    Column("deleted_at", UTCDateTime(), nullable=True),
)

# Workers that serve a profile (migration 0010): ``loading`` while the engine loads and warms up,
# ``ready`` once it claims tasks; ``seen_at`` moves while the worker lives, the row goes when it exits.
workers = Table(
    "workers",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("profile", String(100), nullable=False, index=True),
    Column("device", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("seen_at", UTCDateTime(), nullable=False),
    CheckConstraint(_in("state", WORKER_STATES), name="state_known"),
)
