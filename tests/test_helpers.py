"""The small shared helpers: byte formatting, dtype names, the launcher's environment, consoles."""

from __future__ import annotations

import pytest
import torch

from grow_cli.dtypes import LONG_NAMES, WEIGHT_DTYPES, from_long_name, short_name, torch_dtype
from grow_cli.errors import GrowError
from grow_cli.runtime import env
from grow_cli.units import format_bytes


def test_format_bytes_uses_binary_units():
    assert format_bytes(300) == "300 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30 / 2) == "1.5 GiB"
    assert format_bytes(5e9) == f"{5e9 / 2**30:.3g} GiB"


def test_dtype_names_match_torch_and_transformers():
    for short, long in LONG_NAMES.items():
        assert torch_dtype(short) is getattr(torch, long) and short_name(getattr(torch, long)) == short
        assert from_long_name(str(getattr(torch, long)).removeprefix("torch.")) == short
    assert set(WEIGHT_DTYPES) <= set(LONG_NAMES) and short_name(torch.int8) is None
    with pytest.raises(GrowError, match="unknown dtype 'fp8'"):
        torch_dtype("fp8")


def test_rank_and_world_size_from_the_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (env.rank(), env.world_size(), env.local_rank(), env.is_main()) == (0, 1, 0, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (env.rank(), env.world_size(), env.is_main()) == (3, 4, False)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(GrowError, match="WORLD_SIZE='four' is not an integer"):
        env.world_size()


def test_progress_off_a_terminal_is_logged_as_lines():
    """A log file cannot redraw a bar: each task's row is a line when it first moves, at the
    interval and when it ends; nothing before the work starts (an error stays the only line)."""
    import io

    from rich.console import Console

    from grow_cli.console import progress_bar

    log = io.StringIO()
    with progress_bar("[bold]eval[/] {task.description}", console=Console(file=log, width=200), interval_s=3600) as bar:
        task = bar.add_task("ppl", total=None)
        bar.update(task, total=4)
        assert log.getvalue() == ""  # nothing done yet
        for _ in range(4):
            bar.advance(task, 1)
        bar.update(task, advance=0)  # finished: not logged again
    lines = [line.split()[:3] for line in log.getvalue().splitlines()]
    assert lines == [["eval", "ppl", "1/4"], ["eval", "ppl", "4/4"]]

    with progress_bar("x", console=Console(file=log, width=200)):
        pass
    assert log.getvalue().count("\n") == 2  # rich's own Progress ends with a blank line off a terminal


def test_result_console_off_a_terminal_is_wide_unless_columns_say_otherwise(monkeypatch):
    import io
    import sys

    from grow_cli.console import LOG_WIDTH, stderr_console, stdout_console

    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a log file, as under SLURM
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delenv("COLUMNS", raising=False)
    assert stdout_console().width == LOG_WIDTH and stderr_console().width == LOG_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert stdout_console().width == 100
