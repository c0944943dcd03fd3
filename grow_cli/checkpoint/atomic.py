"""Write a directory under a temporary name and rename it when complete.

A killed job leaves at most a `.NAME.incomplete` directory beside the output, never a half
written output; the next run removes the leftover. The temporary name is deterministic so every
rank of a multi-process job agrees on it without communicating.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from grow_cli.errors import GrowError


def incomplete_path(final: Path) -> Path:
    return final.parent / f".{final.name}.incomplete"


def check_output(final: Path, force: bool, what: str = "output") -> None:
    """Refuse an existing output unless `force`; say how to proceed."""
    if final.exists() and not force:
        raise GrowError(f"{what} {final} already exists; choose another path or pass --force to replace it")


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@contextlib.contextmanager
def atomic_directory(final: str | Path, force: bool = False, what: str = "output"):
    """Yield a temporary directory that becomes `final` only if the block completes.

    Collective when torch.distributed is initialised: every rank must enter and leave together.
    On error the temporary directory is removed and an existing `final` is left untouched.
    """
    final = Path(final)
    check_output(final, force, what)
    tmp = incomplete_path(final)
    if _is_main():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    try:
        yield tmp
        _barrier()
    except BaseException:
        if _is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if _is_main():
        if final.exists():
            trash = final.parent / f".{final.name}.replaced"
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash)
        else:
            tmp.rename(final)
    _barrier()
