"""`grow series --slurm`: one sbatch job per unfinished step, chained with --dependency=afterok.

Training steps run like `grow slurm` jobs (srun + torchrun on the allocation, pre-emption
checkpoint and requeue); the expansion runs on one GPU. The last job is `grow series` itself on one
GPU, with the same options and no --slurm: it finds every training step done (checking each
checkpoint), evaluates the members and writes the report. Steps already done on disk get no job,
so re-running after a failure chains only what is left, and each job resumes its own run.
`DIR/slurm/submit.sh` submits the chain by hand; `--submit` does the same with sbatch from here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from grow_cli.series.options import LaunchOptions
from grow_cli.series.steps import EVAL, TRAINING, SeriesLayout, Step
from grow_cli.training.slurm import SlurmJob, check_sbatch, render_sbatch, write_script

FINISH = "finish"


@dataclass(frozen=True)
class ChainJob:
    name: str
    script: Path
    after: tuple[str, ...]  # the names of the chained jobs it waits for


def _job(launch: LaunchOptions, out: Path, name: str, one_gpu: bool) -> SlurmJob:
    return SlurmJob(
        nodes=1 if one_gpu else launch.nodes, gpus_per_node=1 if one_gpu else launch.gpus_per_node, out=out,
        job_name=f"grow-{name}", time=launch.time, partition=launch.partition, account=launch.account,
        setup=tuple(launch.setup or ()),
    )


def write_chain(pending: list[Step], finish_argv: list[str], layout: SeriesLayout, launch: LaunchOptions) -> list[ChainJob]:
    """Scripts for the pending steps (the eval replaced by the finishing `grow series` job) and
    DIR/slurm/submit.sh; returns the jobs in submission order."""
    names = {step.name for step in pending}
    jobs: list[ChainJob] = []
    training = [step for step in pending if step.kind != EVAL]
    for step in training:
        script = layout.slurm / f"{step.name}.sbatch"
        out = step.output if step.kind in TRAINING else layout.root / "logs"
        out.mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output directory
        write_script(script, render_sbatch(_job(launch, out, step.name, not step.parallel), list(step.argv)), force=True)
        jobs.append(ChainJob(step.name, script, tuple(a for a in step.after if a in names)))
    script = layout.slurm / f"{FINISH}.sbatch"
    (layout.root / "logs").mkdir(parents=True, exist_ok=True)
    write_script(script, render_sbatch(_job(launch, layout.root / "logs", FINISH, True), finish_argv), force=True)
    jobs.append(ChainJob(FINISH, script, tuple(job.name for job in jobs)))
    write_script(layout.slurm / "submit.sh", submit_script(jobs), force=True)
    return jobs


def _var(name: str) -> str:
    return "JOB_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def submit_script(jobs: list[ChainJob]) -> str:
    """A shell script that submits the chain: each job after the jobs it reads from."""
    lines = ["#!/bin/bash", "# Written by `grow series --slurm`: submits the series' jobs in order.", "set -euo pipefail", ""]
    for job in jobs:
        dependency = f" --dependency=afterok:{':'.join('$' + _var(a) for a in job.after)}" if job.after else ""
        lines.append(f"{_var(job.name)}=$(sbatch --parsable{dependency} {shlex.quote(str(job.script))})")
        lines.append(f'echo "{job.name}: job ${_var(job.name)}"')
    return "\n".join(lines) + "\n"


def submit_chain(jobs: list[ChainJob]) -> dict[str, str]:
    """sbatch every job with its dependencies; returns job name -> SLURM job id."""
    import subprocess

    from grow_cli.errors import GrowError

    sbatch = check_sbatch()
    ids: dict[str, str] = {}
    for job in jobs:
        command = [sbatch, "--parsable"]
        if job.after:
            command.append("--dependency=afterok:" + ":".join(ids[a] for a in job.after))
        proc = subprocess.run([*command, str(job.script)], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise GrowError(f"sbatch {job.script} failed: {lines[-1] if lines else proc.returncode}; jobs submitted so far: {ids or 'none'}")
        ids[job.name] = proc.stdout.strip().split(";")[0]
    return ids
