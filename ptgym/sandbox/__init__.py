"""The Docker code sandbox (DESIGN §7): image, exec server, pool and reaper.

``SandboxPool`` hands out long-lived, locked-down containers whose exec server answers tool calls
over the attached stdin/stdout; ``build_image``, ``list_sandboxes`` and ``prune`` back the
``ptgym sandbox build|ps|prune`` commands.
"""

from ptgym.sandbox.container import (
    ExecResult,
    Sandbox,
    SandboxConfig,
    SandboxError,
    SandboxUserError,
)
from ptgym.sandbox.image import IMAGE, ImageBuildError, build_image, ensure_image
from ptgym.sandbox.pool import SandboxPool, close_all_pools
from ptgym.sandbox.reaper import list_sandboxes, prune, reap_orphans

__all__ = [
    "IMAGE",
    "ExecResult",
    "ImageBuildError",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxPool",
    "SandboxUserError",
    "build_image",
    "close_all_pools",
    "ensure_image",
    "list_sandboxes",
    "prune",
    "reap_orphans",
]
