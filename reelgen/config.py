"""One settings class (env prefix ``REELGEN_``), mirrored by ``reelgen serve`` flags.

Built once by the entry point (``cli``) or a test, never at import time. Defaults run the
embedded mode: SQLite and files in the data directory, one worker per device, tiny profile.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REELGEN_", extra="ignore")

    # where things live
    data_dir: Path = Field(default=Path("reelgen-data"), description="SQLite file, outputs and secrets")
    database_url: str | None = Field(default=None, description="default: sqlite in the data dir")
    storage: str = Field(default="local", description="local (files in the data dir) or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint; default AWS")
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    # the HTTP server
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = Field(default=None, description="default: the URL a request came in on")
    max_body_bytes: int = 8 * 1024 * 1024
    request_read_timeout_seconds: float = Field(
        default=60.0, gt=0, description="a request (headers and body) must arrive whole within this; else 408"
    )
    # models
    profile: str = "ltx-2-tiny"
    profiles_file: Path | None = None
    weights: str | None = None
    load_format: Literal["auto", "dummy"] = "auto"
    # execution
    executor: Literal["local", "ray", "none"] = "local"
    ray_address: str | None = Field(default=None, description="Ray cluster to join; default: start a local one")
    ray_actors: int = Field(
        default=0, ge=0, description="engine actors (with parallel: groups); 0 = one per GPU (group) in the Ray cluster"
    )
    devices: str = "cpu"
    parallel: str | None = Field(
        default=None,
        description="one task on a group of devices: cfg=N,ulysses=N,ring=N (docs/deploy.md, 'One task on N GPUs')",
    )
    lease_seconds: float = Field(default=30.0, gt=0)
    heartbeat_seconds: float = Field(default=5.0, gt=0, description="must be shorter than lease_seconds")
    max_attempts: int = 3
    max_run_seconds: float = 3600.0
    shutdown_grace_seconds: float = 30.0
    # security
    secret_key: str | None = Field(default=None, description="HMAC pepper for keys and URL signing")
    download_url_ttl_seconds: int = Field(
        default=7 * 24 * 3600, ge=0, description="lifetime of result links; 0 = links that never expire"
    )
    upload_retention_seconds: int = Field(
        default=24 * 3600, ge=0, description="uploads no task used are deleted after this; 0 = kept"
    )
    allow_private_image_hosts: bool = False
    image_fetch_timeout_seconds: float = 20.0
    max_image_bytes: int = 20 * 1024 * 1024
    upload_quota_bytes: int = Field(
        default=1024 * 1024 * 1024, ge=0, description="bytes of uploaded images one account may keep; 0 = unlimited"
    )
    metrics_token: str | None = Field(default=None, description="bearer token for /metrics; unset = open")
    # per-account defaults (operators override them per account: `reelgen keys limits`); 0 = unlimited
    rate_limit_rpm: int = Field(default=600, ge=0, description="requests per minute, per API process")
    max_active_tasks: int = Field(default=50, ge=0, description="pending + processing tasks at once")
    # webhooks (callback_url): retries with exponential backoff and jitter, then the endpoint rests
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_disable_after: int = Field(default=5, ge=1, description="failed deliveries in a row")
    webhook_disable_seconds: float = Field(default=3600.0, ge=0)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: str) -> str:
        items = [d.strip() for d in v.split(",") if d.strip()]
        if not items:
            raise ValueError("give at least one device, e.g. cpu or cuda:0,cuda:1")
        for d in items:
            if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit()):
                raise ValueError(f"unknown device {d!r}: use cpu or cuda:N")
        return ",".join(items)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if v == "local":
            return v
        if v.startswith("s3://") and v[5:].split("/", 1)[0]:
            return v.rstrip("/")
        raise ValueError(f"unknown storage {v!r}: use local or s3://bucket/prefix")

    @model_validator(mode="after")
    def _cross_field(self) -> Settings:
        # a worker renews its lease every heartbeat: a lease that ends before the next renewal is
        # rescued (and its task run twice) while the worker is still healthy
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be shorter than lease_seconds "
                f"({self.lease_seconds:g}), or every lease expires before it is renewed"
            )
        return self

    @property
    def device_list(self) -> list[str]:
        return self.devices.split(",")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'reelgen.db').resolve()}"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    def resolved_secret(self) -> str:
        """The configured secret, or one kept in ``data_dir/secret_key`` (created once, mode 600)."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_urlsafe(48))
            tmp.chmod(0o600)
            try:
                tmp.rename(path) if not path.exists() else tmp.unlink()
            except FileExistsError:  # pragma: no cover - lost a race with another process
                tmp.unlink(missing_ok=True)
        return path.read_text().strip()
