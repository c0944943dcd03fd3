"""The consoles and progress bars every command shows: one look, on stderr, so stdout stays
clean for `--json` and pipes."""

from __future__ import annotations


def stderr_console():
    """A rich console on stderr (progress, warnings and live status; results go to stdout)."""
    from rich.console import Console

    return Console(stderr=True)


def progress_bar(label: str, *fields: str, counter: str = "count", remaining: bool = False, console=None, disable: bool = False):
    """A transient rich progress bar: `label`, the bar, a counter, text `fields`, elapsed time.

    `counter` is "count" (done/total) or "bytes" (size done and transfer speed); `remaining`
    adds the time-remaining estimate; `label` and `fields` are rich TextColumn templates.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    counters = {"count": (MofNCompleteColumn(),), "bytes": (DownloadColumn(), TransferSpeedColumn())}[counter]
    return Progress(
        TextColumn(label),
        BarColumn(),
        *counters,
        *(TextColumn(f) for f in fields),
        TimeElapsedColumn(),
        *((TimeRemainingColumn(),) if remaining else ()),
        console=console or stderr_console(),
        transient=True,
        disable=disable,
    )
