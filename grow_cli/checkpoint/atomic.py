"""Write outputs under a temporary name and rename them when complete.

A killed job leaves at most a hidden temporary beside the output, never a half written output.
Directories (`atomic_directory`) are collective and hold the output's lock
(`grow_cli.checkpoint.lock`) from start to rename, so a second job on the same output refuses
instead of sharing a temporary. The temporary `.NAME.<token>.incomplete` is unique per job (rank 0
draws the token and broadcasts it); the next job on that output removes a killed job's leftover,
which it may do safely because it holds the lock. Single files (`atomic_file`) are written by one process: the temporary name carries the
pid and a random part so two writers of the same file never share a temporary, and the data is
fsynced before the rename so a crash right after it cannot leave an empty file behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from grow_cli.checkpoint.lock import output_lock
from grow_cli.errors import GrowError


def incomplete_path(final: Path, token: str) -> Path:
    return final.parent / f".{final.name}.{token}.incomplete"


def leftover_temporaries(final: Path) -> list[Path]:
    """Temporaries of `final` that killed jobs left behind."""
    return sorted(final.parent.glob(f".{glob.escape(final.name)}.*incomplete"))


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


def _agreed_token() -> str:
    """A fresh token, rank 0's on every rank."""
    import torch.distributed as dist

    token = [secrets.token_hex(4)]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(token, src=0)
    return token[0]


@contextlib.contextmanager
def atomic_directory(final: str | Path, force: bool = False, what: str = "output"):
    """Yield a temporary directory that becomes `final` only if the block completes.

    Collective when torch.distributed is initialised: every rank must enter and leave together.
    On error the temporary directory is removed and an existing `final` is left untouched.
    """
    final = Path(final)
    check_output(final, force, what)
    with output_lock(final, what):
        check_output(final, force, what)  # again: another job may have finished it meanwhile
        tmp = incomplete_path(final, _agreed_token())
        if _is_main():
            for leftover in leftover_temporaries(final):
                shutil.rmtree(leftover, ignore_errors=True)
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


@contextlib.contextmanager
def atomic_file(final: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final` that replaces `final` once the block completes.

    The block writes the temporary (a library's own writer such as `savefig` can be handed the
    path); it is then fsynced, given `mode` if one is set, and renamed over `final`. On error the
    temporary is removed and `final` is untouched.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def default_file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process's umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def give_default_mode(path: Path) -> None:
    """Give `path` the mode every other output file has. Writers that go through a private
    temporary file of their own (safetensors' `save_file`) leave 0600 behind, which other users
    of a shared model directory cannot read."""
    path.chmod(default_file_mode())


def write_text_atomic(final: str | Path, text: str, mode: int | None = None) -> Path:
    """Replace `final` with `text` atomically (see `atomic_file`)."""
    with atomic_file(final, mode) as tmp:
        tmp.write_text(text)
    return Path(final)


def write_json_atomic(final: str | Path, data: dict) -> Path:
    """Replace `final` with `data` as indented JSON, atomically."""
    return write_text_atomic(final, json.dumps(data, indent=2) + "\n")
