"""Where outputs are kept: ``pick(settings)`` returns the configured ``Storage`` (only "local" so far)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelgen.storage.base import Storage

if TYPE_CHECKING:
    from reelgen.config import Settings

__all__ = ["Storage", "pick"]


def pick(settings: Settings) -> Storage:
    """The storage backend for ``settings``; each backend module is imported only when chosen."""
    from reelgen.storage.local import LocalStorage

    return LocalStorage.from_settings(settings)
