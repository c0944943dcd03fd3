"""`grow series PLAN --data PREFIX --out DIR`: the whole series as one resumable command.

No torch or megatron at module scope: checking checkpoints and running steps import them (or run
them in child processes) only when the command runs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import typer

from grow_cli.errors import GrowError
from grow_cli.options import argv_of, command_from
from grow_cli.series.options import LaunchOptions, PlanArgument, SeriesOptions

HELP = (
    "Build the whole series: train stage 1, expand it into stage 2, train, ..., evaluate every "
    "member and write the growth-vs-scratch report (DIR/report/). Re-running continues where a "
    "killed series stopped; a different plan or options is refused."
)
EPILOG = (
    "Examples:\n\n"
    "  grow series plan.yaml --data data/fwe --out series/ --with-scratch\n\n"
    "  grow series plan.yaml --data data/fwe --out series/ --nproc-per-node 8\n\n"
    "  grow series plan.yaml --data /shared/fwe --out /shared/series --slurm --nodes 4 --time 24:00:00 --submit\n\n"
    "See docs/series.md."
)
_OWN_ENTRIES = {"series.json", "runs", "init", "scratch", "logs", "report", "slurm", "eval.json"}


@command_from(PlanArgument, SeriesOptions, LaunchOptions)
def series_command(plan: PlanArgument, options: SeriesOptions, launch: LaunchOptions) -> None:
    _series(plan, options, launch)


def _check_options(options: SeriesOptions, launch: LaunchOptions) -> None:
    from grow_cli.expansion.cli import Depth, Width

    for value, kind, flag in ((options.width, Width, "--width"), (options.depth, Depth, "--depth")):
        if value not in {member.value for member in kind}:
            raise GrowError(f"{flag} {value!r}: choose one of {', '.join(m.value for m in kind)}")
    for name in ("log_interval", "eval_interval", "eval_iters", "save_interval"):
        if getattr(options, name) < 1:
            raise GrowError(f"--{name.replace('_', '-')} must be positive, got {getattr(options, name)}")
    if options.scratch_lr is not None and options.scratch_lr <= 0:
        raise GrowError(f"--scratch-lr must be positive, got {options.scratch_lr}")
    if launch.nproc_per_node < 1:
        raise GrowError(f"--nproc-per-node must be positive, got {launch.nproc_per_node}")
    if launch.submit and not launch.slurm:
        raise GrowError("--submit submits the --slurm chain: add --slurm")
    if options.eval_tasks and not options.task_data:
        raise GrowError("--eval-tasks needs --task-data DIR (local task files; the hub is never used)")


def _absolute(options: SeriesOptions) -> SeriesOptions:
    def absolute(value: str | None) -> str | None:
        return None if value is None else str(Path(value).expanduser().resolve())

    return replace(options, data=absolute(options.data), out=absolute(options.out), eval_data=absolute(options.eval_data),
                   task_data=absolute(options.task_data))


def _prepare_directory(layout, identity: dict, force: bool):
    """The recorded state (or a fresh one); --force with another series there removes its outputs."""
    from grow_cli.series.state import SeriesState, load_state

    state_file = layout.state_file
    if not state_file.exists() and layout.root.is_dir():
        foreign = sorted(entry.name for entry in layout.root.iterdir() if entry.name not in _OWN_ENTRIES)
        if foreign and not force:
            raise GrowError(f"--out {layout.root} holds other files ({', '.join(foreign[:3])}) and no series; pick a new directory")
    state = load_state(state_file, identity, force)
    if state is None:
        if state_file.exists() or (force and layout.root.is_dir()):
            for path in layout.outputs():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        state = SeriesState(identity)
    return state


def _series(plan_arg: PlanArgument, options: SeriesOptions, launch: LaunchOptions) -> None:
    from grow_cli.data.info import read_data_info
    from grow_cli.planning.planfile import load_plan
    from grow_cli.series.steps import SeriesLayout, series_steps

    _check_options(options, launch)
    options = _absolute(options)
    plan_path = str(Path(plan_arg.plan).expanduser().resolve())
    plan = load_plan(plan_path)
    data = read_data_info(options.data)
    if options.eval_data:
        read_data_info(options.eval_data)
    layout = SeriesLayout(Path(options.out))
    identity = {"plan": plan.to_dict(), "data_fingerprint": data.fingerprint, "options": options.identity()}
    steps = series_steps(plan, plan_path, options, layout)
    if launch.dry_run:
        _print_dry_run(steps, layout, launch)
        return
    from grow_cli.checkpoint.lock import output_lock

    with output_lock(layout.root, "series directory"):  # one series per directory: series.json has one writer
        finished = _run_series(steps, plan, plan_path, options, launch, layout, identity)
    if finished is None:
        return
    state, report = finished
    if launch.as_json:
        typer.echo(json.dumps({"state": state.to_json()["steps"], "report": report}, indent=2))
    else:
        typer.echo(report["verdict"])
        from grow_cli.series.report import report_files

        first, *others = report_files()
        typer.echo(f"report: {layout.report / first} (and {', '.join(others)})")


def _run_series(steps, plan, plan_path: str, options: SeriesOptions, launch: LaunchOptions, layout, identity: dict):
    """Run the steps and write the report: (the final state, series.json's content); None when
    --slurm only wrote (and maybe submitted) the chain."""
    from grow_cli.series.state import save_state

    state = _prepare_directory(layout, identity, launch.force)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_state(layout.state_file, state)
    if launch.slurm:
        _write_slurm(steps, plan, plan_path, options, launch, layout)
        return None
    from grow_cli.console import pinned_stderr_console
    from grow_cli.series.report import write_report
    from grow_cli.series.runner import SeriesRunner

    state = SeriesRunner(steps, plan, layout, state, launch.nproc_per_node, pinned_stderr_console(), launch.isolate).run()
    return state, write_report(steps, plan, layout, state)


def _print_dry_run(steps, layout, launch: LaunchOptions) -> None:
    import shlex

    from grow_cli.series.runner import launcher, runs_in_process

    def here(step) -> bool:
        return runs_in_process(step, launch.nproc_per_node, launch.isolate)

    if launch.as_json:
        typer.echo(json.dumps({"out": str(layout.root), "steps": [{**s.to_json(), "in_process": here(s)} for s in steps]}, indent=2))
        return
    for index, step in enumerate(steps, 1):
        command = [*launcher(step, launch.nproc_per_node), *step.argv]
        typer.echo(f"{index}. {step.name}{' (in this process)' if here(step) else ''}: {shlex.join(command)}")
    typer.echo(f"then: the report in {layout.report}")


def _write_slurm(steps, plan, plan_path: str, options: SeriesOptions, launch: LaunchOptions, layout) -> None:
    from grow_cli.series.checks import step_done
    from grow_cli.series.slurm_chain import submit_chain, write_chain
    from grow_cli.series.steps import EVAL, TRAINING

    members = [s for s in steps if s.kind in TRAINING]
    pending = [s for s in steps if s.kind != EVAL and not step_done(s, plan, layout, members)]
    finish = ["series", plan_path, *argv_of(options, frozenset({"data", "out", "eval_data", "task_data"}))]
    jobs = write_chain(pending + [steps[-1]], finish, layout, launch)
    ids = submit_chain(jobs) if launch.submit else {}
    if launch.as_json:
        typer.echo(json.dumps({"jobs": [{"name": j.name, "script": str(j.script), "after": list(j.after), "id": ids.get(j.name)}
                                        for j in jobs], "submit": str(layout.slurm / "submit.sh")}, indent=2))
        return
    for job in jobs:
        after = f" after {', '.join(job.after)}" if job.after else ""
        typer.echo(f"{job.name}: {job.script}{after}" + (f" (job {ids[job.name]})" if job.name in ids else ""))
    if not ids:
        typer.echo(f"submit the chain with: bash {layout.slurm / 'submit.sh'}")
