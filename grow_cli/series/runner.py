"""Run the steps of a series on this node, one after another, keeping DIR/series.json current.

Each step's output goes to DIR/logs/<step>.log; how its command runs (in this process, or as a
child process under torchrun or with --isolate) is `series/execute.py`'s job. Before a step runs,
its output is checked (`series/checks.py`): a finished step is skipped, an interrupted training run
resumes from its last checkpoint (that is what `grow pretrain` does with an existing --out), a
killed expansion left nothing behind (outputs are atomic) and runs again. Above the running step
the overview shows every step with its state, tokens, loss and ETA, read from the runs'
metrics.jsonl.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from grow_cli.checkpoint.rundir import METRICS_FILE, read_metrics
from grow_cli.errors import GrowError
from grow_cli.planning.planfile import Plan
from grow_cli.series.checks import step_done
from grow_cli.series.execute import interruptible, python_prefix, run_child, run_here, torchrun_prefix
from grow_cli.series.state import DONE, FAILED, RUNNING, SeriesState, now, save_state
from grow_cli.series.steps import EVAL, TRAINING, SeriesLayout, Step

def launcher(step: Step, nproc: int) -> list[str]:
    """The argv prefix that starts `grow` for `step` as a process of its own."""
    return torchrun_prefix(nproc) if needs_torchrun(step, nproc) else python_prefix()


def needs_torchrun(step: Step, nproc: int) -> bool:
    return nproc > 1 and step.parallel


def runs_in_process(step: Step, nproc: int, isolate: bool) -> bool:
    """Whether the step runs inside the series' process (see `series/execute.py`)."""
    return not isolate and not needs_torchrun(step, nproc)


@dataclass(frozen=True)
class Progress:
    """The newest train record of a run: enough for one overview row."""

    iteration: int | None = None
    tokens: int | None = None
    loss: float | None = None
    eta_s: float | None = None


def run_progress(run: Path) -> Progress:
    """From the tail of the run's metrics.jsonl (cheap: the file is read from its end)."""
    records = read_metrics(run / METRICS_FILE, "train", tail_bytes=16384)
    if not records:
        return Progress()
    record = records[-1]
    return Progress(record["iteration"], record["tokens"], record["loss"], record.get("eta_s"))


def overview(steps: list[Step], state: SeriesState):
    """The rich table of every step: state, tokens, loss, ETA."""
    from rich.table import Table

    from grow_cli.training.metrics import format_seconds
    from grow_cli.units import format_count

    table = Table(title="grow series", title_justify="left")
    for column in ("step", "state", "tokens", "loss", "ETA", "time"):
        table.add_column(column, justify="left" if column in ("step", "state") else "right")
    for step in steps:
        record = state.step(step.name)
        progress = run_progress(step.output) if step.kind in TRAINING else Progress()
        eta = format_seconds(progress.eta_s) if record.state == RUNNING and progress.eta_s is not None else ""
        table.add_row(
            step.name, record.state,
            format_count(progress.tokens) if progress.tokens else "",
            f"{progress.loss:.4f}" if progress.loss is not None else "",
            eta, f"{record.seconds:.0f} s" if record.seconds is not None else "",
        )
    return table


class SeriesRunner:
    """Executes the steps in order, keeping DIR/series.json current."""

    def __init__(self, steps: list[Step], plan: Plan, layout: SeriesLayout, state: SeriesState, nproc: int,
                 console, isolate: bool = False):
        self.steps = steps
        self.plan = plan
        self.layout = layout
        self.state = state
        self.nproc = nproc
        self.console = console  # a pinned console: it keeps drawing while a step owns descriptors 1 and 2
        self.isolate = isolate
        self.members = [step for step in steps if step.kind in TRAINING]

    def _record(self, name: str, **changes) -> None:
        self.state = self.state.with_step(name, **changes)
        save_state(self.layout.state_file, self.state)

    def done(self, step: Step) -> bool:
        return step_done(step, self.plan, self.layout, self.members)

    def run(self) -> SeriesState:
        from rich.live import Live

        live = Live(overview(self.steps, self.state), console=self.console, refresh_per_second=1,
                    auto_refresh=False, transient=not self.console.is_terminal,
                    redirect_stdout=False, redirect_stderr=False)  # the step's output belongs in its log
        with live:
            for step in self.steps:
                if self.done(step):
                    if self.state.step(step.name).state != DONE:
                        self._record(step.name, state=DONE, message="found complete on disk")
                    continue
                self._execute(step, live)
                live.update(overview(self.steps, self.state), refresh=True)
        if not self.console.is_terminal:
            self.console.print(overview(self.steps, self.state))
        return self.state

    def _execute(self, step: Step, live) -> None:
        attempt = self.state.step(step.name).attempts + 1
        started = now()
        self._record(step.name, state=RUNNING, started=started, seconds=0.0, attempts=attempt, message=None)
        log = self.layout.log(step.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        here = runs_in_process(step, self.nproc, self.isolate)
        command = [*(["grow"] if here else launcher(step, self.nproc)), *step.argv]
        if not self.console.is_terminal:
            where = "in this process" if here else "as its own process"
            self.console.print(f"series: {step.name} (attempt {attempt}, {where}): {' '.join(step.argv[:1])} -> {step.output}")

        def tick() -> None:
            self.state = self.state.with_step(step.name, seconds=now() - started)
            live.update(overview(self.steps, self.state), refresh=True)

        with log.open("a") as handle, tempfile.TemporaryFile("w+") as stdout:
            handle.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {attempt}: {' '.join(command)}\n")
            handle.flush()
            try:
                with interruptible():
                    run = run_here if here else run_child
                    status = run(step.argv if here else command, stdout if step.kind == EVAL else handle, handle, tick)
            except BaseException:
                self._record(step.name, state=FAILED, seconds=now() - started, message="interrupted")
                raise
            stdout.seek(0)
            captured = stdout.read()
        seconds = now() - started
        if status != 0:
            self._record(step.name, state=FAILED, seconds=seconds, message=f"exit status {status}")
            raise GrowError(f"step {step.name} failed (exit status {status}): {_last_line(log)}; see {log}, then re-run to resume")
        if step.kind == EVAL:
            _write_eval(step.output, captured)
        if not self.done(step):
            self._record(step.name, state=FAILED, seconds=seconds, message="stopped before the end")
            raise GrowError(f"step {step.name} stopped before its end (pre-empted or --exit-interval); re-run to resume it")
        self._record(step.name, state=DONE, seconds=seconds)


def _last_line(log: Path) -> str:
    """The step's last words (its one-line error, without the `error:` the series adds again)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip().removeprefix("error: ") if lines else "no output"


def _write_eval(path: Path, stdout: str) -> None:
    """`grow eval --json` prints one JSON document on stdout: keep it as eval.json."""
    from grow_cli.checkpoint.atomic import write_json_atomic

    try:
        record = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        raise GrowError("the evaluation printed no JSON; see its log") from None
    write_json_atomic(path, record)
