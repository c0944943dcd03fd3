"""Room on disk: refuse a write that cannot fit, and name the directory when one runs out anyway.

A save that hits a full disk surfaces from deep inside torch's writer as
`RuntimeError: [enforce fail at inline_container.cc] ... file write failed`, naming neither the
directory nor the size. Writers know what they are about to write (the tensors of the state they
save), so they check the free space first and say how much is missing; a disk that fills up
during the write anyway (another job writing there) is still reported against the directory.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from grow_cli.errors import GrowError
from grow_cli.units import format_bytes

# Besides the tensors: common.pt, DCP's index, the hash record (a few MB at most).
HEADROOM_BYTES = 16 << 20


def _existing(directory: Path) -> Path:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def free_bytes(directory: str | Path) -> int:
    return shutil.disk_usage(_existing(Path(directory).absolute())).free


def space_error(directory: str | Path, needed: int | None = None) -> str:
    free = free_bytes(directory)
    need = f"needs {format_bytes(needed)}, " if needed else ""
    return f"not enough disk space in {directory}: the write {need}{format_bytes(free)} free; free some space or choose another location"


def check_free_space(directory: str | Path, needed: int) -> None:
    """A GrowError unless `directory`'s file system has room for `needed` bytes (plus headroom)."""
    if free_bytes(directory) < needed + HEADROOM_BYTES:
        raise GrowError(space_error(directory, needed + HEADROOM_BYTES))


def check_room(directory: str | Path, local_bytes: int) -> None:
    """Collective when torch.distributed is initialised: every rank passes the bytes it will
    write into `directory`; rank 0 checks their sum and every rank gets the same answer."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        check_free_space(directory, local_bytes)
        return
    total = torch.tensor([local_bytes], dtype=torch.int64)
    dist.all_reduce(total)  # gloo and NCCL both reduce CPU int64 through the default group
    refusal: list = [None]
    if dist.get_rank() == 0:
        try:
            check_free_space(directory, int(total.item()))
        except GrowError as error:
            refusal[0] = str(error)
    dist.broadcast_object_list(refusal, src=0)
    if refusal[0]:
        raise GrowError(refusal[0])


def _disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT as an OSError, or as the text torch's writers wrap it in (DCP gathers each
    rank's failure into a CheckpointException, torch.save raises an enforce RuntimeError)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return "file write failed" in text or "No space left" in text or "Disk quota exceeded" in text


@contextlib.contextmanager
def disk_full_as_error(directory: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk while writing into `directory` into one line naming it."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except (OSError, RuntimeError, CheckpointException) as error:
        if not _disk_full(error):
            raise
        raise GrowError(space_error(directory, needed)) from None
