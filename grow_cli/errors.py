"""User-facing errors.

A `GrowError` is a mistake the user can fix (bad flag, missing file, infeasible shape). The CLI
prints its message as one line and exits non-zero, with no traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class GrowError(Exception):
    """A user mistake: the message names what is wrong and how to fix it."""

    exit_code = 2
