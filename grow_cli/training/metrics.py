"""What a run reports: JSON lines, TensorBoard, and the console (rank 0 only).

Throughput is counted in model FLOPs with Megatron-LM's per-token formula (dense GQA SwiGLU with
causal attention, the TP-padded vocabulary: `grow_cli.flops.megatron_flops_per_token`),
which is what Megatron-LM logs as TFLOP/s and what MFU is measured against here. MFU = achieved
model FLOP/s per device / the device's peak dense bf16 FLOP/s (`grow_cli.planning.hardware`, or
`--peak-tflops`); it is left empty on a device without a known peak (CPU).

`metrics.jsonl` holds one JSON object per line (fields in docs/training.md): `kind` "run" at
each start or resume, "train" every log interval, "valid" after each validation. On resume the
records after the resumed checkpoint (steps that will be re-run) are dropped, so the file always
reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grow_cli.checkpoint.atomic import write_text_atomic
from grow_cli.checkpoint.rundir import METRICS_FILE, TENSORBOARD_DIR, read_metrics
from grow_cli.training.config import TrainConfig

FLOPS_CONVENTION = "megatron"


def model_flops_per_token(config: TrainConfig) -> float:
    """Training FLOPs per token of this run's model (Megatron-LM convention, padded vocab)."""
    from grow_cli.flops import megatron_flops_per_token

    return megatron_flops_per_token(config.shape, config.parallel.layout.tp)


def device_peak_flops(override_tflops: float | None = None) -> tuple[str, float | None]:
    """(device description, peak dense bf16 FLOP/s or None when unknown)."""
    import torch

    from grow_cli.runtime.device import device_policy

    if not device_policy().cuda:
        name = "cpu"
        return name, None if override_tflops is None else override_tflops * 1e12
    name = torch.cuda.get_device_name()
    if override_tflops is not None:
        return name, override_tflops * 1e12
    from grow_cli.planning.hardware import GPUS

    for key, spec in GPUS.items():
        if key in name.lower():
            return name, spec.peak_flops
    return name, None


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    tflops_per_device: float
    mfu: float | None

    @classmethod
    def measure(cls, tokens: float, seconds: float, flops_per_token: float, devices: int, peak: float | None):
        tokens_per_s = tokens / seconds if seconds > 0 else 0.0
        flops_per_device = tokens_per_s * flops_per_token / devices
        return cls(tokens_per_s, flops_per_device / 1e12, flops_per_device / peak if peak else None)


@dataclass
class IntervalAverage:
    """Per-step values accumulated between two log lines."""

    steps: int = 0
    skipped: int = 0
    seconds: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    grad_norm: float | None = None

    def add(self, step, seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds
        self.skipped += int(step.skipped)
        for name in step.sums:
            self.losses[name] = self.losses.get(name, 0.0) + step.mean(name)
        if step.grad_norm is not None:
            self.grad_norm = step.grad_norm

    def mean_losses(self) -> dict[str, float]:
        return {name: value / max(self.steps, 1) for name, value in self.losses.items()}


@dataclass(frozen=True)
class Position:
    """Where the run stands, stamped on every record."""

    iteration: int
    consumed_samples: int
    tokens: int
    flops: float


@dataclass(frozen=True)
class TrainRecord:
    position: Position
    loss: float
    losses: dict[str, float]
    lr: float
    grad_norm: float | None
    skipped: int
    iter_time_s: float
    throughput: Throughput
    elapsed_s: float
    eta_s: float

    def to_json(self) -> dict:
        return {
            "kind": "train",
            **asdict(self.position),
            "loss": self.loss,
            "losses": self.losses,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "skipped": self.skipped,
            "iter_time_s": self.iter_time_s,
            "tokens_per_s": self.throughput.tokens_per_s,
            "tflops_per_gpu": self.throughput.tflops_per_device,
            "mfu": self.throughput.mfu,
            "elapsed_s": self.elapsed_s,
            "eta_s": self.eta_s,
            "time": time.time(),
        }


@dataclass(frozen=True)
class ValidRecord:
    position: Position
    loss: float
    losses: dict[str, float]

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def to_json(self) -> dict:
        return {"kind": "valid", **asdict(self.position), "loss": self.loss, "losses": self.losses, "ppl": self.ppl, "time": time.time()}


def truncate_records(path: Path, iteration: int) -> None:
    """Keep the records up to `iteration` (a resume point); rewrite the file atomically."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("kind") == "run" or r.get("iteration", 0) <= iteration]
    write_text_atomic(path, "".join(f"{json.dumps(record)}\n" for record in kept))


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class MetricsLog:
    """Writes records to metrics.jsonl and TensorBoard and shows progress; a no-op off rank 0."""

    def __init__(self, config: TrainConfig, enabled: bool, start_iteration: int):
        self.enabled = enabled
        self.config = config
        self.total = config.batch.train_iters
        self._progress = None
        self._task = None
        self._writer = None
        self._file = None
        if not enabled:
            return
        from grow_cli.console import stderr_console

        self.path = config.out / METRICS_FILE
        truncate_records(self.path, start_iteration)
        self._file = self.path.open("a", buffering=1)
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(
            log_dir=str(config.out / TENSORBOARD_DIR), purge_step=start_iteration + 1
        )
        self.console = stderr_console()
        self.show_lines = not config.quiet
        if not config.quiet and sys.stderr.isatty():
            from grow_cli.console import progress_bar

            self._progress = progress_bar(
                "[bold]training[/bold]", "loss {task.fields[loss]}", "{task.fields[rate]}", remaining=True, console=self.console
            )
            self._task = self._progress.add_task("train", total=self.total, completed=start_iteration, loss="-", rate="")
            self._progress.start()

    def run(self, record: dict) -> None:
        if self.enabled:
            self._write({"kind": "run", **record, "time": time.time()})
            if self.show_lines:
                self.console.print(record.get("message", ""), highlight=False, soft_wrap=True)

    def step(self, iteration: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=iteration)

    def train(self, record: TrainRecord) -> None:
        if not self.enabled:
            return
        self._write(record.to_json())
        step = record.position.iteration
        scalars = {
            "train/loss": record.loss,
            "train/lr": record.lr,
            "train/tokens_per_s": record.throughput.tokens_per_s,
            "train/tflops_per_gpu": record.throughput.tflops_per_device,
        }
        if record.grad_norm is not None:
            scalars["train/grad_norm"] = record.grad_norm
        if record.throughput.mfu is not None:
            scalars["train/mfu"] = record.throughput.mfu
        for name, value in record.losses.items():
            scalars[f"train/{name}"] = value
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)
        self._writer.add_scalar("train/loss_vs_tokens", record.loss, record.position.tokens)
        if self._progress is not None:
            self._progress.update(
                self._task, completed=step, loss=f"{record.loss:.4f}", rate=f"{record.throughput.tokens_per_s:,.0f} tok/s"
            )
        if self.show_lines:
            self.console.print(self._train_line(record), highlight=False, soft_wrap=True)

    def _train_line(self, record: TrainRecord) -> str:
        width = len(str(self.total))
        parts = [
            f"iter {record.position.iteration:>{width}}/{self.total}",
            f"loss {record.loss:.4f}",
            f"lr {record.lr:.3e}",
            "grad " + ("-" if record.grad_norm is None else f"{record.grad_norm:.3f}"),
            f"{record.throughput.tokens_per_s:,.0f} tok/s",
            f"{record.throughput.tflops_per_device:.3g} TFLOP/s/GPU",
        ]
        if record.throughput.mfu is not None:
            parts.append(f"MFU {100 * record.throughput.mfu:.1f}%")
        if record.skipped:
            parts.append(f"skipped {record.skipped}")
        parts.append(f"ETA {format_seconds(record.eta_s)}")
        return " | ".join(parts)

    def valid(self, record: ValidRecord) -> None:
        if not self.enabled:
            return
        self._write(record.to_json())
        step = record.position.iteration
        self._writer.add_scalar("valid/loss", record.loss, step)
        self._writer.add_scalar("valid/ppl", record.ppl, step)
        self._writer.add_scalar("valid/loss_vs_tokens", record.loss, record.position.tokens)
        for name, value in record.losses.items():
            self._writer.add_scalar(f"valid/{name}", value, step)
        if self.show_lines:
            self.console.print(
                f"validation at iter {step}: loss {record.loss:.4f} | ppl {record.ppl:,.2f}", highlight=False, soft_wrap=True
            )

    def note(self, message: str) -> None:
        if self.enabled and self.show_lines:
            self.console.print(message, highlight=False, soft_wrap=True)

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
