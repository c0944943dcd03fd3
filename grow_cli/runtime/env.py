"""This process's place in a launch, as torchrun and srun announce it in the environment.

Commands read it before (or without) initialising torch.distributed: to decide who prints, how
many ranks share the work, whether to start a process group. No torch import, so `cli.py`
modules may use it at any time.
"""

from __future__ import annotations

import os

from grow_cli.errors import GrowError


def _int_from_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        raise GrowError(f"{name}={os.environ[name]!r} is not an integer; check the launcher's environment") from None


def rank() -> int:
    """Global rank (RANK); 0 for a plain, unlaunched call."""
    return _int_from_env("RANK", 0)


def world_size() -> int:
    """Number of ranks (WORLD_SIZE); 1 for a plain, unlaunched call."""
    return _int_from_env("WORLD_SIZE", 1)


def local_rank() -> int:
    """Rank within the node (LOCAL_RANK): which GPU this process drives."""
    return _int_from_env("LOCAL_RANK", 0)


def is_main() -> bool:
    """Whether this process is rank 0, the one that prints reports."""
    return rank() == 0
