"""Everything a session with a lent GPU must measure, as one prepared command.

Device time is short (15 minutes a task, all tries together), so the checks are written and run
end to end on the CPU first (`--cpu`: the same steps at tiny size) and the device only measures.
Each step is its own process group with its own time limit, under a total budget, so one hung or
failed step costs its own limit and not the rest; every step's output goes to one log and its
status to status.json. Benchmarks' markdown sections are collected in tables.md (benchdoc's
GROW_BENCH_REPORT) for `bench/gpu_check_record.py` to append to docs/benchmarks.md once the files
are back. Run it through `bench/gpu_check.sh`, which installs the carried wheels first.

    python bench/gpu_check.py [--cpu] [--out DIR] [--budget SECONDS] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
LOG, TABLES, STATUS, ENV = "gpu_check.log", "tables.md", "status.json", "env.json"
KILL_GRACE_S = 10  # SIGTERM, then SIGKILL this much later
MIN_STEP_S = 15  # a step offered less than this is skipped, not started to be killed


@dataclass(frozen=True)
class Step:
    """One check: a command line, its own time limit, and why it cannot run (if it cannot)."""

    name: str
    argv: list[str]
    limit_s: float
    skip: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StepResult:
    name: str
    status: str  # ok | failed | timeout | skipped
    seconds: float
    returncode: int | None
    note: str = ""


class Budget:
    """The total wall-clock time the steps may take; each step gets min(its limit, what is left)."""

    def __init__(self, total_s: float, clock=time.monotonic):
        self._clock = clock
        self._deadline = clock() + total_s

    def allow(self, limit_s: float) -> float:
        return max(0.0, min(limit_s, self._deadline - self._clock()))


def run_step(step: Step, budget: Budget, log) -> StepResult:
    """Run `step` in its own session (so a timeout kills its torchrun children too), output to `log`."""
    if step.skip:
        return StepResult(step.name, "skipped", 0.0, None, step.skip)
    limit = budget.allow(step.limit_s)
    if limit < MIN_STEP_S:
        return StepResult(step.name, "skipped", 0.0, None, f"total budget spent ({limit:.0f} s left)")
    log.write(f"\n===== {step.name}: {' '.join(step.argv)} (limit {limit:.0f} s)\n")
    log.flush()
    started = time.monotonic()
    proc = subprocess.Popen(step.argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, **step.env))
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return StepResult(step.name, "timeout", time.monotonic() - started, None, f"killed after {limit:.0f} s")
    seconds = time.monotonic() - started
    return StepResult(step.name, "ok" if code == 0 else "failed", seconds, code, "" if code == 0 else f"exit {code}")


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


CPU_LIMIT_FACTOR = 4


def plan(cpu: bool, out: Path) -> list[Step]:
    """The steps in priority order. `cpu`: the same steps at tiny size, to prove the plumbing."""
    python = sys.executable
    bench = lambda name: str(BENCH / name)  # noqa: E731
    kernel_tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_kernels_*.py"))
    fused = BENCH / "fused_kernel.py"
    expand_work = str(Path(os.environ.get("TMPDIR", "/tmp")) / "grow-gpu-check-expand")
    seq_lens = (128, 256) if cpu else (1024, 2048)
    tiny_train = ["--steps", "2", "--warmup", "1"] if cpu else []
    steps = [
        Step("environment", [python, bench("device_env.py"), "--json", str(out / ENV)], 60 if cpu else 90),
        Step("loss-curve", [python, bench("loss_curve.py"), *(["--steps", "12", "--min-drop", "0.1", "--lr", "1e-2"] if cpu else [])],
             150),
        Step("kernel-tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *kernel_tests], 120,
             None if kernel_tests else "no tests/test_kernels_*.py"),
        *(
            Step(f"throughput-seq{seq}", [python, bench("pretrain_throughput.py"), "--seq-len", str(seq), *tiny_train], 150)
            for seq in seq_lens
        ),
        Step("fused-kernel", [python, str(fused), *(["--quick"] if cpu else [])], 120,
             None if fused.exists() else "bench/fused_kernel.py is absent"),
        Step("expand-1B-2B" if not cpu else "expand-5M-10M",
             [python, bench("expand_memory.py"), "--workdir", expand_work, *(["--source", "5M", "--target", "10M"] if cpu else [])],
             240),
    ]
    if cpu:  # the rehearsal runs on shared 2-core machines: its limits only catch hangs
        steps = [replace(step, limit_s=step.limit_s * CPU_LIMIT_FACTOR) for step in steps]
    return steps


@dataclass(frozen=True)
class CheckRecord:
    """status.json: what ran where, and how each step ended (what gpu_check_record.py reads)."""

    date: str
    mode: str
    command: str
    device: str
    total_s: float
    steps: list[StepResult]

    @classmethod
    def load(cls, path: Path) -> "CheckRecord":
        data = json.loads(path.read_text())
        return cls(**dict(data, steps=[StepResult(**s) for s in data["steps"]]))

    def step_table(self) -> str:
        rows = [f"| {s.name} | {s.status} | {s.seconds:.0f} s | {s.note} |" for s in self.steps]
        return "\n".join(["| step | status | wall | note |", "|---|---|---|---|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", "--dry-run", dest="cpu", action="store_true", help="the same steps at tiny size on the CPU")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(BENCH / "out"), help="default: $OUT, else bench/out")
    parser.add_argument("--budget", type=float, default=None,
                        help="total seconds for all steps (default 420 on the device: a rerun fits in a 15-minute lease; 4x that with --cpu)")
    parser.add_argument("--only", help="comma-separated step names to run (the rest are skipped)")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in (LOG, TABLES, STATUS, ENV):
        (out / name).unlink(missing_ok=True)
    steps = plan(args.cpu, out)
    if args.only:
        wanted = set(args.only.split(","))
        steps = [s if s.name in wanted else replace(s, skip="not in --only") for s in steps]
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a dry run measures the CPU even on a GPU machine
    os.environ.setdefault("OMP_NUM_THREADS", "1" if args.cpu else "8")
    os.environ.update(PYTHONUNBUFFERED="1", GROW_BENCH_REPORT=str(out / TABLES), PYTHONWARNINGS="ignore")

    budget = Budget(args.budget if args.budget is not None else 420.0 * (CPU_LIMIT_FACTOR if args.cpu else 1))
    started = time.monotonic()
    results = []
    with (out / LOG).open("a") as log:
        for step in steps:
            result = run_step(step, budget, log)
            results.append(result)
            print(f"[gpu_check] {result.name}: {result.status} ({result.seconds:.0f} s) {result.note}", flush=True)
    device = json.loads((out / ENV).read_text())["device"] if (out / ENV).exists() else "unknown"
    record = CheckRecord(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        mode="cpu dry run" if args.cpu else "device",
        command=" ".join(["bash bench/gpu_check.sh", *sys.argv[1:]]),
        device=device,
        total_s=time.monotonic() - started,
        steps=results,
    )
    (out / STATUS).write_text(json.dumps(asdict(record), indent=1))
    tables = out / TABLES
    print("\n" + (tables.read_text() if tables.exists() else "(no tables)"))
    print(f"\n## GPU check steps ({record.mode}, {record.total_s:.0f} s in all)\n\n{record.step_table()}")
    if any(r.status in ("failed", "timeout") for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
