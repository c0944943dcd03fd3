"""No orphans: every process a grow job starts dies with it.

megatron's checkpoint writer forks one worker per write bucket (each a copy of the trainer,
holding its memory and open data files) and spawns a `multiprocessing` manager for their
results. A SIGKILL on the trainer (the OOM killer, `kill -9`, a node agent) runs no handler, so
unless the children watch for it themselves they outlive it under PID 1. Linux can do that
watching for them: `PR_SET_PDEATHSIG` makes the kernel send SIGKILL to a child when its parent
dies. It must be set in the child: forked children get it from an at-fork hook installed here;
the spawned manager (which runs no at-fork hook) from its initializer: megatron's lazy
`_get_write_results_queue` is replaced by one that starts the same spawn-context manager with
`die_with_parent` as initializer. On other systems `die_with_parent` is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_installed = False
_manager = None  # megatron's write-results manager, started on the first save


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; otherwise nothing)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def reap_children_with_parent() -> None:
    """From now on, every child this process forks dies with it (idempotent)."""
    global _installed
    if _installed:
        return
    os.register_at_fork(after_in_child=die_with_parent)
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    filesystem_async._get_write_results_queue = _write_results_queue
    _installed = True


def _write_results_queue():
    """megatron's `_get_write_results_queue`, with a manager that dies with this process."""
    global _manager
    import multiprocessing
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        _manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        _manager.start(initializer=die_with_parent)
        filesystem_async._results_queue = _manager.Queue()
    return filesystem_async._results_queue
