"""reelgen: a self-hostable, VicSee Kling 3.0-compatible video-generation API.

This package's top level is the SDK surface only; the server lives in submodules and needs the
``reelgen[server]`` extra.
"""

from __future__ import annotations

from reelgen.errors import ErrorCode, ReelgenError

__version__ = "0.1.0"

__all__ = ["ErrorCode", "ReelgenError", "__version__"]
