"""One writer per output: an advisory lock held for as long as a job writes an output.

Two jobs writing the same `--out` would interleave their files (one's tensors under the other's
lineage, a metrics log with holes). The lock is `flock` on a hidden file beside the output
(`.NAME.lock`, beside rather than inside because a finished output directory is renamed into
place): the kernel drops it when the process dies, however it dies, so a killed job never leaves
a stale lock behind. The holder writes its PID and host into the file so the refused job can name
it. The file is removed on release; a job that opened it just before the removal notices that the
name now points elsewhere and tries again, so two jobs can never both believe they hold it.

Collective under torch.distributed: rank 0 takes the lock and broadcasts the outcome, so every
rank refuses (or proceeds) together. A process may take the lock of an output it already holds
(a run directory's checkpoint inside the run's own lock): that nests instead of refusing itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from grow_cli.errors import GrowError, user_path_error

_HELD: set[Path] = set()  # outputs this process holds (nested takes are free)


def lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


def _acquire(final: Path, what: str) -> int:
    """Rank-local: an fd holding the lock of `final`; a GrowError naming the holder otherwise."""
    path = lock_path(final)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise GrowError(
                f"{what} {final} is being written by {_holder(path)}; wait for that job to finish "
                "or choose another output"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file after we opened it: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"grow job PID {os.getpid()} on host {socket.gethostname()}\n".encode())
    return fd


def _release(final: Path, fd: int) -> None:
    lock_path(final).unlink(missing_ok=True)
    os.close(fd)


def _distributed():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


@contextlib.contextmanager
def output_lock(final: str | Path, what: str = "output") -> Iterator[None]:
    """Hold the lock of `final` for the block (collective when torch.distributed is initialised)."""
    final = Path(final).absolute()
    if final in _HELD:
        yield
        return
    dist = _distributed()
    fd, refusal = None, None
    if dist is None or dist.get_rank() == 0:
        try:
            fd = _acquire(final, what)
        except GrowError as error:
            refusal = str(error)
        except OSError as error:  # e.g. a read-only directory: every rank must hear of it, not hang
            if dist is None:
                raise
            refusal = user_path_error(error) or f"cannot lock {lock_path(final)}: {error}"
    if dist is not None:
        decision = [refusal]
        dist.broadcast_object_list(decision, src=0)
        refusal = decision[0]
    if refusal is not None:
        raise GrowError(refusal)
    _HELD.add(final)
    try:
        yield
    finally:
        _HELD.discard(final)
        if fd is not None:
            _release(final, fd)
