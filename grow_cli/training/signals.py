"""Pre-emption: SIGTERM or SIGUSR1 asks the run to checkpoint after the current step and exit 0.

SLURM sends SIGUSR1 ahead of the time limit (`--signal=USR1@120`) and SIGTERM on pre-emption or
scancel; torchrun forwards SIGTERM (and SIGUSR1 when told to, TORCHELASTIC_SIGNALS_TO_HANDLE) to
its workers and gives them TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds to exit. The handler only sets
a flag; the loop asks `requested()` after every step, which all-reduces the flag so every rank
stops at the same iteration even if only some of them got the signal.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Context manager installing the handlers (main thread only) and restoring the old ones."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.received = signal.Signals(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self, device) -> bool:
        """Collective: True on every rank if any rank has received a stop signal."""
        import torch

        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32, device=device)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
