"""sbatch scripts for `grow pretrain` on a SLURM cluster: srun starts one torchrun per node.

The script follows the usual Megatron-on-SLURM recipe: one task per node, torchrun with the c10d
rendezvous on the first node of the allocation (`scontrol show hostnames`), NCCL defaults that
can be overridden from the submitting shell, `CUDA_DEVICE_MAX_CONNECTIONS=1` (Megatron's
tensor-parallel overlap needs it), and pre-emption handling:

- `#SBATCH --signal=USR1@LEAD`: SLURM signals the job steps LEAD seconds before the time limit;
  torchrun is told to forward SIGUSR1 (and SIGTERM, sent on scancel/pre-emption) to its workers
  and to give them up to LEAD-10 seconds; grow saves a checkpoint after the current step and
  exits 0, writing `"status": "preempted"` to DIR/summary.json.
- `#SBATCH --requeue`: after srun returns, the script requeues the job if the run was pre-empted
  (not if it failed or finished); the requeued job resumes from DIR's latest checkpoint.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grow_cli.errors import GrowError


@dataclass(frozen=True)
class SlurmJob:
    nodes: int
    gpus_per_node: int
    out: Path  # the run directory (logs land there too)
    job_name: str = "grow-pretrain"
    time: str | None = None  # e.g. "24:00:00"; None: the partition's default
    partition: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    signal_lead_s: int = 120
    port: int = 29500
    python: str = field(default_factory=lambda: sys.executable)
    setup: tuple[str, ...] = ()  # shell lines run before srun (module load, conda activate...)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise GrowError(f"--nodes ({self.nodes}) and --gpus-per-node ({self.gpus_per_node}) must be at least 1")
        if self.signal_lead_s < 30:
            raise GrowError(f"--signal-lead {self.signal_lead_s} s leaves no time to save a checkpoint; use >= 30")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


def render_sbatch(job: SlurmJob, grow_args: list[str]) -> str:
    """The batch script running `grow <grow_args>` on every GPU of the allocation."""
    directives = [
        f"--job-name={job.job_name}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={job.gpus_per_node}",
        f"--output={job.out}/slurm-%j.out",
        "--open-mode=append",
        f"--signal=USR1@{job.signal_lead_s}",
        "--requeue",
    ]
    if job.cpus_per_task:
        directives.append(f"--cpus-per-task={job.cpus_per_task}")
    if job.time:
        directives.append(f"--time={job.time}")
    if job.partition:
        directives.append(f"--partition={job.partition}")
    if job.account:
        directives.append(f"--account={job.account}")
    command = " ".join(shlex.quote(a) for a in grow_args)
    summary = shlex.quote(str(job.out / "summary.json"))
    lines = [
        "#!/bin/bash",
        "# Written by `grow slurm`. Submit with: sbatch THIS_FILE (every resubmission resumes the run).",
        *(f"#SBATCH {d}" for d in directives),
        "",
        "set -uo pipefail",
        *job.setup,
        "",
        "# NCCL / torch defaults; export your own values before sbatch to override them.",
        "export CUDA_DEVICE_MAX_CONNECTIONS=1",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}",
        "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
        "export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}",
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{max(1, (job.cpus_per_task or 8 * job.gpus_per_node) // job.gpus_per_node)}}}",
        "# Pre-emption: torchrun forwards these signals to the workers and waits for their checkpoint.",
        "export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
        f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={job.signal_lead_s - 10}",
        "",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MASTER_PORT=${{MASTER_PORT:-{job.port}}}",
        'echo "grow: job $SLURM_JOB_ID on $SLURM_JOB_NUM_NODES node(s), rendezvous $MASTER_ADDR:$MASTER_PORT, '
        'restart ${SLURM_RESTART_COUNT:-0}"',
        "",
        f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {shlex.quote(job.python)} -m torch.distributed.run \\",
        f"    --nnodes={job.nodes} --nproc-per-node={job.gpus_per_node} \\",
        '    --rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" \\',
        f"    -m grow_cli {command}",
        "status=$?",
        "",
        f"if grep -q '\"status\": \"preempted\"' {summary} 2>/dev/null; then",
        '    echo "grow: pre-empted after a checkpoint; requeueing job $SLURM_JOB_ID"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "    exit 0",
        "fi",
        "exit $status",
        "",
    ]
    return "\n".join(lines)


def write_script(path: Path, text: str, force: bool) -> Path:
    """Write the script under a temporary name and rename it; refuse to replace without --force."""
    from grow_cli.checkpoint.atomic import check_output, write_text_atomic

    check_output(path, force, "script")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text, mode=0o755)


def check_sbatch() -> str:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise GrowError("--submit needs sbatch, which is not on PATH: run on a SLURM login node, or drop --submit and sbatch the script there")
    return sbatch


def submit(path: Path) -> str:
    """sbatch the script; return SLURM's answer ("Submitted batch job 1234")."""
    sbatch = check_sbatch()
    proc = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise GrowError(f"sbatch {path} failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    return proc.stdout.strip()
