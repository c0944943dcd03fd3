"""The consoles and progress displays every command shows: one look, progress and warnings on
stderr so stdout stays clean for `--json` and pipes, and output that stays readable off a
terminal (CI logs, SLURM output files), where nothing redraws and nobody resizes a window."""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# Off a terminal rich assumes 80 columns and cuts table cells to fit (`scrat…`, `5.86e…`); a log
# file has no width, so tables get this many columns, far more than any table grow prints.
# A COLUMNS variable in the environment still wins.
LOG_WIDTH = 1000

# Off a terminal a progress bar becomes a line on stderr at most this often (and when a task ends).
LOG_INTERVAL_S = 30.0


def _console(stderr: bool, file=None) -> Console:
    console = Console(stderr=stderr, file=file)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, file=file, width=LOG_WIDTH)
    return console


def stdout_console() -> Console:
    """A rich console on stdout, for results (tables, what was written)."""
    return _console(stderr=False)


def stderr_console() -> Console:
    """A rich console on stderr (progress, warnings and live status; results go to stdout)."""
    return _console(stderr=True)


def pinned_stderr_console() -> Console:
    """A stderr console that stays on today's stderr when file descriptor 2 is later pointed elsewhere.

    `grow series` runs steps inside its own process with descriptors 1 and 2 sent to the step's
    log (so torch's C++ messages land there too); its live overview must keep drawing on the
    terminal meanwhile, so it writes to a duplicate of the descriptor taken now. Where stderr has
    no descriptor (a test capturing it in memory) this is the plain stderr console.
    """
    try:
        descriptor = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both an OSError and a ValueError
        return stderr_console()
    return _console(stderr=True, file=os.fdopen(descriptor, "w", buffering=1, encoding="utf-8", errors="replace"))


def progress_bar(
    label: str,
    *fields: str,
    counter: str = "count",
    remaining: bool = False,
    console=None,
    disable: bool = False,
    interval_s: float = LOG_INTERVAL_S,
):
    """A transient rich progress bar: `label`, the bar, a counter, text `fields`, elapsed time.

    `counter` is "count" (done/total) or "bytes" (size done and transfer speed); `remaining`
    adds the time-remaining estimate; `label` and `fields` are rich TextColumn templates.
    Off a terminal the same columns, less the bar, are logged as lines every `interval_s`
    seconds instead (see `_LoggedProgress`).
    """
    console = console or stderr_console()
    counters = {"count": (MofNCompleteColumn(),), "bytes": (DownloadColumn(), TransferSpeedColumn())}[counter]
    columns = (
        TextColumn(label),
        *((BarColumn(),) if console.is_terminal else ()),
        *counters,
        *(TextColumn(f) for f in fields),
        TimeElapsedColumn(),
        *((TimeRemainingColumn(),) if remaining else ()),
    )
    if console.is_terminal:
        return Progress(*columns, console=console, transient=True, disable=disable)
    return _LoggedProgress(*columns, console=console, disable=disable, interval_s=interval_s)


class _LoggedProgress(Progress):
    """A rich Progress for a log file: a live bar cannot redraw there, and rich's own shows
    nothing until the end (then a blank line), so a 10-minute `grow eval` under SLURM looked
    hung. This one never starts the live display; it prints a task's row as one line when the
    task first moves, every `interval_s` seconds while it runs and when it finishes (nothing
    before some work is done, so an error in the checks that come first, after a total is set,
    stays the only line)."""

    def __init__(self, *columns, interval_s: float, **kwargs):
        super().__init__(*columns, **kwargs)
        self.interval_s = interval_s
        self._logged_at: dict[TaskID, float] = {}
        self._finished: set[TaskID] = set()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        if self.disable or task_id in self._finished or not task.completed:
            return
        now = time.monotonic()
        if task.finished:
            self._finished.add(task_id)
        elif task_id in self._logged_at and now - self._logged_at[task_id] < self.interval_s:
            return
        self._logged_at[task_id] = now
        self.console.print(self.make_tasks_table([task]), highlight=False)
