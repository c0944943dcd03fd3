"""How one step's `grow` command runs: inside this process, or as a child process.

A step is a `grow` command line, the one `--dry-run` prints. On one process per node it runs
inside the series' own process (`grow_cli.app.main(argv)`): a fresh Python spends 4-5 s
importing torch and megatron-core before it does anything, which on a miniature series was most
of the time not spent training. The result is the same: each command seeds everything it draws
from and closes the process group it opened (tests compare both ways bit for bit). A step runs
as its own process when it needs its own launch (torchrun, for `--nproc-per-node` > 1) or when
`--isolate` asks for it (a crash of the step then cannot touch the series' bookkeeping).

Either way file descriptors 1 and 2 of the step go to its log (so torch's C++ messages land there
too), its stdout to a separate file when the series needs it (the eval step's JSON), and a
SIGTERM or Ctrl-C to the series reaches the step: a training step checkpoints and stops, which
`grow pretrain` does on SIGTERM, so a re-run resumes it.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable

POLL_S = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StepInterrupted(SystemExit):
    """The series itself got SIGTERM or SIGINT while a step ran (exit status 128 + signal)."""


def _interrupt(signum, frame) -> None:
    raise StepInterrupted(128 + signum)


@contextmanager
def interruptible():
    """SIGTERM and SIGINT raise StepInterrupted, which passes through click (a KeyboardInterrupt
    would become click's "Aborted!" and exit 1); `grow pretrain` puts its own SIGTERM handler
    above this one while it trains."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def torchrun_prefix(nproc: int) -> list[str]:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--standalone", f"--nproc-per-node={nproc}", "-m", "grow_cli"]


def python_prefix() -> list[str]:
    return [sys.executable, "-m", "grow_cli"]


def run_child(command: list[str], stdout: IO, stderr: IO, tick: Callable[[], None]) -> int:
    """Run `command` as a child process, calling `tick` every POLL_S seconds until it exits; if the
    series is interrupted meanwhile, the child gets SIGTERM and is waited for."""
    proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=dict(os.environ))
    try:
        while True:
            try:
                return proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                tick()
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        raise


def run_here(argv: list[str], stdout: IO, stderr: IO, tick: Callable[[], None]) -> int:
    """Run `grow ARGV...` inside this process with descriptors 1 and 2 on `stdout` and `stderr`,
    calling `tick` every POLL_S seconds from a helper thread; return its exit status.

    A bug in the step (any other exception) is written to its log with its traceback and counts
    as exit status 1, as it would for a child process; an interrupt of the series propagates."""
    from grow_cli.app import main

    ticker = _Ticker(tick)
    ticker.start()
    try:
        with _descriptors(stdout.fileno(), stderr.fileno()):
            try:
                main(list(argv))
            except StepInterrupted:
                raise
            except SystemExit as done:
                return _status(done.code)
            except Exception:
                traceback.print_exc()
                return 1
            return 0
    finally:
        ticker.stop()
        gc.collect()  # the step's model, optimizer and data loaders are garbage now: free them before the next


def _status(code) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


@contextmanager
def _descriptors(stdout: int, stderr: int):
    """Point file descriptors 1 and 2 at `stdout` and `stderr` for the block, then back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)


class _Ticker(threading.Thread):
    """Calls `tick` every POLL_S seconds until stopped (the overview's refresh during a step)."""

    def __init__(self, tick: Callable[[], None]):
        super().__init__(name="series-overview", daemon=True)
        self._tick = tick
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(POLL_S):
            self._tick()

    def stop(self) -> None:
        self._stopped.set()
        self.join()
