"""Where outputs are kept: ``pick(settings)`` returns the configured ``Storage`` (local or s3://)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelgen.storage.base import Storage

if TYPE_CHECKING:
    from reelgen.config import Settings

__all__ = ["Storage", "pick"]


def pick(settings: Settings) -> Storage:
    """The storage backend for ``settings``; each backend module is imported only when chosen."""
    if settings.storage.startswith("s3://"):
        from reelgen.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    from reelgen.storage.local import LocalStorage

    return LocalStorage.from_settings(settings)
