"""One training run, start to finish: resume, step, log, validate, checkpoint, stop.

`pretrain(config, objective, step)` is the whole of `grow pretrain` below the CLI and the only
entry point other commands need (`grow distill` passes its own Objective and lineage step). It
runs on every rank of a torchrun/srun launch; ranks agree on every decision (stop, save, evaluate) because the decisions
depend only on the iteration counter and on collective flags.

Per iteration: one optimizer step on the next global batch, then (in this order) the log line
every `--log-interval`, validation every `--eval-interval` on the same `--eval-iters` global
batches of the validation split, and a checkpoint every `--save-interval`, at the end, at
`--exit-interval`, or when a stop signal arrived. Validation and checkpoint time are not counted
in the throughput.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from grow_cli.checkpoint.lock import output_lock
from grow_cli.checkpoint.metadata import LineageStep
from grow_cli.checkpoint.rundir import (
    check_run_directory,
    read_summary,
    run_checkpoints,
    write_run_record,
    write_summary,
)
from grow_cli.console import stderr_console
from grow_cli.layout import Layout
from grow_cli.runtime.env import is_main
from grow_cli.training.checkpointing import (
    TrainState,
    initial_info,
    load_train_checkpoint,
    resume_point,
    rng_states,
    save_train_checkpoint,
    set_rng_states,
)
from grow_cli.training.config import TrainConfig
from grow_cli.training.metrics import (
    FLOPS_CONVENTION,
    IntervalAverage,
    MetricsLog,
    Position,
    Throughput,
    TrainRecord,
    ValidRecord,
    device_peak_flops,
    model_flops_per_token,
)
from grow_cli.training.objective import LanguageModeling, Objective


@dataclass(frozen=True)
class TrainSummary:
    """How a run ended; printed by the CLI and written to DIR/summary.json by rank 0."""

    status: str  # "completed", "preempted" (stop signal) or "stopped" (--exit-interval)
    out: str
    iteration: int
    train_iters: int
    consumed_samples: int
    tokens: int
    flops: float
    flops_convention: str
    loss: float | None
    valid_loss: float | None
    checkpoint: str | None
    train_seconds: float
    tokens_per_s: float | None  # the last log interval
    tokens_per_s_average: float | None  # the whole run: tokens over time in training steps
    tflops_per_gpu: float | None
    mfu: float | None
    device: str
    world_size: int
    layout: Layout

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainSummary":
        return cls(**{**data, "layout": Layout(**data["layout"])})


def pretrain(config: TrainConfig, objective: Objective | None = None, step: LineageStep | None = None) -> TrainSummary:
    """Train `config` on this process's rank; collective across the launch. Returns the summary.

    `objective` defaults to next-token cross-entropy, `step` (the lineage step the checkpoints
    record) to the pretrain step. The process group is closed at the end only if this call opened
    it: a command that does more in the same launch (`grow distill` evaluates afterwards) opens it
    first and closes it itself: a second rendezvous inside one torchrun launch hung (TP=2 test)."""
    import torch

    from grow_cli.runtime.distributed import init_distributed, shutdown

    check_run_directory(config)  # before the process group: a wrong --out fails at once
    finished = _finished_summary(config)
    if finished is not None:
        if is_main():
            with output_lock(config.out, "run directory"):  # another job writing it now: refuse, as a training run would
                if not config.quiet:
                    stderr_console().print(_nothing_to_do(config), highlight=False, soft_wrap=True)
        return finished
    layout = config.parallel.layout
    owned = not torch.distributed.is_initialized()
    runtime = init_distributed(layout.tp, layout.pp, seed=config.seed)
    try:
        if runtime.layout != layout:
            raise RuntimeError(f"resolved {layout.describe()} but the launch has {runtime.layout.describe()}")
        with output_lock(config.out, "run directory"):  # one job per run directory
            resume, skipped = None, []
            if check_run_directory(config) is not None:  # again, now that no other job can change it
                resume, skipped = resume_point(config.out)
            return _Run(config, runtime, objective or LanguageModeling(), resume, skipped, step).execute()
    finally:
        if owned:
            shutdown()


def _nothing_to_do(config: TrainConfig) -> str:
    return f"{config.out} already holds the finished run ({config.batch.train_iters} iterations): nothing to do"


def _finished_summary(config: TrainConfig) -> TrainSummary | None:
    """The recorded summary of a run that already completed, else None.

    A re-run of a finished run has nothing to train: it builds no model and rewrites no record
    (the losses and throughput in summary.json are known only to the run that trained). Without
    a completed summary (the last attempt died after its final checkpoint) the run starts as
    usual and finds nothing to do itself.
    """
    from grow_cli.checkpoint.integrity import sound_checkpoint

    found = run_checkpoints(config.out)
    train_iters = config.batch.train_iters
    if not found or found[-1][0] < train_iters or sound_checkpoint(found[-1][1]) is not None:
        return None  # not finished, or its final checkpoint is damaged: resume picks a sound one
    recorded = read_summary(config.out)
    if recorded is None or recorded.get("status") != "completed" or recorded.get("iteration") != train_iters:
        return None
    return TrainSummary.from_json(recorded)


class _Run:
    def __init__(
        self, config: TrainConfig, runtime, objective: Objective, resume: Path | None, skipped: list[str], step: LineageStep | None
    ):
        self.config = config
        self.step = step
        self.runtime = runtime
        self.objective = objective
        self.resume = resume
        self.skipped = skipped  # newer checkpoints passed over on resume, and why
        self.primary = objective.metrics[0]
        self.flops_per_token = model_flops_per_token(config)
        self.device_name, self.peak = device_peak_flops(config.peak_tflops)
        self.last_loss: float | None = None
        self.valid_loss: float | None = None
        self.last_eval: int | None = None
        self.saved_at: int | None = None
        self.saved_path: Path | None = None

    # ---- setup ---------------------------------------------------------------------------
    def _setup(self) -> None:
        import torch
        from megatron.core import parallel_state

        from grow_cli.data.datasets import build_datasets
        from grow_cli.training.engine import Engine

        config = self.config
        if self.runtime.is_main:
            write_run_record(config)
        torch.distributed.barrier()
        self.engine = Engine(config, self.runtime, self.objective, load_init=self.resume is None)
        if self.resume is not None:
            self.state, self.info = load_train_checkpoint(self.resume, self.engine)
        else:
            self.state, self.info = TrainState(), initial_info(config, self.step)
        batch = config.batch
        eval_iters = config.intervals.eval_iters
        self.train_ds, self.valid_ds = build_datasets(
            config.data,
            config.shape.seq_len,
            train_samples=config.window.dataset_samples(batch.train_iters * batch.global_batch),
            valid_samples=eval_iters * batch.global_batch,
            seed=config.window.seed,
        )
        restored = rng_states()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.start_iteration = self.state.iteration
        self.log = MetricsLog(config, self.runtime.is_main, self.state.iteration)
        # Opening the log (its TensorBoard writer) draws from Python's RNG; a resumed run must
        # take its first step from the states the checkpoint holds, as the uninterrupted run does.
        set_rng_states(restored)

    def _sample_batches(self, dataset, consumed: int, window=None):
        """This DP rank's micro-batches of `dataset` from global sample `consumed` on, read
        through the run's data `window` (training) or from the start (validation)."""
        from grow_cli.data.datasets import SampleBatches

        policy = self.runtime.policy
        batch = self.config.batch
        placement = {} if window is None else {
            "offset": window.start, "wrap": window.wrap, "samples": batch.train_iters * batch.global_batch,
        }
        return SampleBatches(
            dataset,
            batch.micro_batch,
            dp_rank=self.dp_rank,
            dp_size=self.runtime.layout.dp,
            consumed_samples=consumed,
            num_workers=policy.loader_workers,
            pin_memory=policy.pin_memory,
            **placement,
        )

    def _start_record(self) -> None:
        config, state = self.config, self.state
        layout = config.parallel.layout
        what = "resuming from " + self.resume.name if self.resume else (
            f"initialised from {config.init}" if config.init else "from scratch"
        )
        message = (
            f"pretrain {config.model.name} ({config.shape.describe()}) on {layout.world_size} x {self.device_name}: "
            f"{layout.describe()}, {config.batch.train_iters} iters x "
            f"{config.batch.global_batch} x {config.shape.seq_len} tokens, {config.model.dtype}, "
            f"lr {config.optimizer.lr:g} -> {config.optimizer.min_lr:g} (warmup {config.optimizer.warmup_iters}); {what}"
        )
        self.log.run(
            {
                "event": "resume" if self.resume else "start",
                "iteration": state.iteration,
                "checkpoint": str(self.resume) if self.resume else None,
                "message": message,
                "stage": config.stage or config.model.name,
                "shape": config.shape.to_dict(),
                "layout": layout.to_dict(),
                "device": self.device_name,
                "flops_convention": FLOPS_CONVENTION,
                "flops_per_token": self.flops_per_token,
                "tokens_per_iter": config.tokens_per_iter,
                "train_iters": config.batch.train_iters,
            }
        )

    # ---- the loop ------------------------------------------------------------------------
    def execute(self) -> TrainSummary:
        from grow_cli.training.signals import StopSignals

        with StopSignals() as signals:  # from the start: a signal during setup stops after one step
            self._setup()
            try:
                for note in self.skipped:
                    self.log.note(f"warning: {note}; resuming from {self.resume.name}")
                self._start_record()
                for line in self.objective.setup(self.runtime):
                    self.log.note(line)
                train_iters = self.config.batch.train_iters
                if self.start_iteration >= train_iters:
                    self.log.note(_nothing_to_do(self.config))
                    return self._summary("completed", IntervalAverage())
                status, last = self._train(signals)
                if status == "completed" and self.last_eval != self.state.iteration:
                    self._evaluate()
                return self._summary(status, last)
            finally:
                self.log.close()

    def _train(self, signals) -> tuple[str, IntervalAverage]:
        """Steps until the end, an --exit-interval or a stop signal; returns (status, last interval)."""
        intervals = self.config.intervals
        train_iters = self.config.batch.train_iters
        batches = self._sample_batches(self.train_ds, self.state.consumed_samples, self.config.window)
        interval, last = IntervalAverage(), IntervalAverage()
        while self.state.iteration < train_iters:
            started = time.perf_counter()
            step = self.engine.train_step(batches)
            seconds = time.perf_counter() - started
            self._advance(seconds)
            if self.state.iteration == self.start_iteration + 1:
                self._note_kernels()
            interval.add(step, seconds)
            iteration = self.state.iteration
            self.log.step(iteration)
            if iteration % intervals.log == 0 or iteration == train_iters:
                self._log_train(interval)
                last, interval = interval, IntervalAverage()
            if iteration % intervals.eval == 0:
                self._evaluate()
            stop = signals.requested(self.runtime.device)
            exit_now = intervals.exit is not None and iteration % intervals.exit == 0 and iteration < train_iters
            if stop or exit_now or iteration % intervals.save == 0 or iteration == train_iters:
                self._save()
            if stop:
                name = signals.received.name if signals.received else "a stop signal on another rank"
                self.log.note(f"received {name}: saved and stopped at iteration {iteration}")
                return "preempted", interval if interval.steps else last
            if exit_now:
                self.log.note(f"--exit-interval {intervals.exit}: saved and stopped at iteration {iteration}")
                return "stopped", interval if interval.steps else last
        return "completed", last

    def _note_kernels(self) -> None:
        """After the first step: which kernels ran (SDPA picks its backend per call)."""
        from grow_cli.runtime.attention import backends_used

        sdpa = backends_used(self.engine.gpt)
        attention = f"sdpa ({'/'.join(sdpa)})" if sdpa else self.config.model.attention
        self.log.note(f"kernels: attention {attention}, {self.config.speed.describe()}")

    def _advance(self, seconds: float) -> None:
        state = self.state
        self.state = replace(
            state,
            iteration=state.iteration + 1,
            consumed_samples=state.consumed_samples + self.config.batch.global_batch,
            flops=state.flops + self.flops_per_token * self.config.tokens_per_iter,
            train_seconds=state.train_seconds + seconds,
        )

    def _position(self) -> Position:
        state = self.state
        return Position(state.iteration, state.consumed_samples, state.consumed_samples * self.config.shape.seq_len, state.flops)

    def _throughput(self, interval: IntervalAverage) -> Throughput:
        return Throughput.measure(
            interval.steps * self.config.tokens_per_iter,
            interval.seconds,
            self.flops_per_token,
            self.runtime.layout.world_size,
            self.peak,
        )

    def _log_train(self, interval: IntervalAverage) -> None:
        from grow_cli.training.schedule import current_lr

        losses = interval.mean_losses()
        iter_time = interval.seconds / max(interval.steps, 1)
        self.last_loss = losses.get(self.primary)
        self.log.train(
            TrainRecord(
                position=self._position(),
                loss=losses.get(self.primary, float("nan")),
                losses=losses,
                lr=current_lr(self.engine.optimizer),
                grad_norm=interval.grad_norm,
                skipped=interval.skipped,
                iter_time_s=iter_time,
                throughput=self._throughput(interval),
                elapsed_s=self.state.train_seconds,
                eta_s=(self.config.batch.train_iters - self.state.iteration) * iter_time,
            )
        )

    def _evaluate(self) -> None:
        if self.valid_ds is None or not self.config.intervals.eval_iters:
            return
        batches = self._sample_batches(self.valid_ds, 0)
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        with self.engine.settled_weights():
            steps = [self.engine.eval_step(batches) for _ in range(self.config.intervals.eval_iters)]
        for step in steps:
            for name in step.sums:
                sums[name] = sums.get(name, 0.0) + step.sums[name]
                counts[name] = counts.get(name, 0.0) + step.counts[name]
        losses = {name: sums[name] / max(counts[name], 1.0) for name in sums}
        self.valid_loss = losses[self.primary]
        self.last_eval = self.state.iteration
        self.log.valid(ValidRecord(self._position(), self.valid_loss, losses))

    def _save(self) -> None:
        if self.saved_at == self.state.iteration:
            return
        started = time.perf_counter()
        with self.engine.settled_weights():
            path = save_train_checkpoint(self.config, self.engine, self.state, self.info)
        self.saved_at = self.state.iteration
        self.saved_path = path
        self.log.note(f"saved checkpoint {path} ({time.perf_counter() - started:.1f} s)")

    def _summary(self, status: str, last: IntervalAverage) -> TrainSummary:
        import torch

        config = self.config
        throughput = self._throughput(last) if last.steps else None
        checkpoint = self.saved_path or self.resume
        tokens = self.state.consumed_samples * config.shape.seq_len
        summary = TrainSummary(
            status=status,
            out=str(config.out),
            iteration=self.state.iteration,
            train_iters=config.batch.train_iters,
            consumed_samples=self.state.consumed_samples,
            tokens=tokens,
            flops=self.state.flops,
            flops_convention=FLOPS_CONVENTION,
            loss=self.last_loss,
            valid_loss=self.valid_loss,
            checkpoint=str(checkpoint) if checkpoint else None,
            train_seconds=self.state.train_seconds,
            tokens_per_s=throughput.tokens_per_s if throughput else None,
            tokens_per_s_average=tokens / self.state.train_seconds if self.state.train_seconds > 0 else None,
            tflops_per_gpu=throughput.tflops_per_device if throughput else None,
            mfu=throughput.mfu if throughput else None,
            device=self.device_name,
            world_size=config.parallel.layout.world_size,
            layout=config.parallel.layout,
        )
        if self.runtime.is_main:
            write_summary(config.out, summary.to_json())
        torch.distributed.barrier()
        return summary
