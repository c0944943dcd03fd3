"""User-facing errors.

A `GrowError` is a mistake the user can fix (bad flag, missing file, infeasible shape). The CLI
prints its message as one line and exits non-zero, with no traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno
import os


class GrowError(Exception):
    """A user mistake: the message names what is wrong and how to fix it."""

    exit_code = 2


_ADVICE = {
    errno.EROFS: "is on a read-only file system; choose a writable location",
    errno.ENOSPC: "cannot be written: no space left on the device; free some space or choose another location",
    errno.EDQUOT: "cannot be written: disk quota exceeded; free some space or choose another location",
    errno.EACCES: "is not accessible (permission denied); fix its permissions or choose another location",
    errno.EPERM: "is not accessible (operation not permitted); fix its permissions or choose another location",
    errno.ENOENT: "does not exist; check the path",
    errno.ENOTDIR: "is under a file, not a directory; check the path",
    errno.EISDIR: "is a directory where a file was expected; check the path",
}


def user_path_error(error: OSError, installed: tuple[str, ...] = ()) -> str | None:
    """One line for an OSError on a path the user gave; None when it names no path or one
    under `installed` (grow's own files: a bug, not the user's to fix)."""
    if not error.filename:
        return None
    path = os.path.abspath(os.fsdecode(error.filename))
    if any(path.startswith(os.path.abspath(root) + os.sep) for root in installed):
        return None
    advice = _ADVICE.get(error.errno, f"cannot be used ({error.strerror or type(error).__name__}); check the path")
    return f"{path} {advice}"
