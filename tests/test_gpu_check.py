"""bench/gpu_check.py: step bookkeeping (limits, budget, kills, statuses), the record section, and
the whole CPU dry run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402
from gpu_check import Budget, CheckRecord, Step, StepResult, run_step  # noqa: E402
from gpu_check_record import section  # noqa: E402
from loss_curve import Comparison, Curve  # noqa: E402


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_budget_gives_each_step_the_smaller_of_its_limit_and_what_is_left():
    clock = FakeClock()
    budget = Budget(300, clock=clock)
    assert budget.allow(120) == 120
    clock.now += 250
    assert budget.allow(120) == 50
    clock.now += 100
    assert budget.allow(120) == 0


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_run_step_statuses_and_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.5)
    budget = Budget(60)
    pidfile = tmp_path / "grandchild.pid"
    with (tmp_path / "log").open("a") as log:
        ok = run_step(Step("ok", ["sh", "-c", "echo hello-from-ok"], 10), budget, log)
        failed = run_step(Step("failed", ["sh", "-c", "exit 3"], 10), budget, log)
        started = time.monotonic()
        # a grandchild (what torchrun starts) must die with the step's process group
        hung = run_step(Step("hung", ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], 1), budget, log)
        elapsed = time.monotonic() - started
        skipped = run_step(Step("absent", ["false"], 10, skip="bench/x.py is absent"), budget, log)
        spent = run_step(Step("late", ["true"], 10), Budget(0.1), log)
    assert (ok.status, ok.returncode) == ("ok", 0)
    assert (failed.status, failed.returncode, failed.note) == ("failed", 3, "exit 3")
    assert hung.status == "timeout" and hung.returncode is None
    assert 1 <= elapsed < 1 + gpu_check.KILL_GRACE_S
    deadline = time.monotonic() + 5
    while _alive(int(pidfile.read_text())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(int(pidfile.read_text()))
    assert (skipped.status, skipped.note) == ("skipped", "bench/x.py is absent")
    assert spent.status == "skipped" and "budget" in spent.note
    text = (tmp_path / "log").read_text()
    assert "===== ok: sh -c echo hello-from-ok" in text and "hello-from-ok" in text
    assert "===== absent" not in text and "===== late" not in text


def test_record_round_trips_and_nests_the_tables(tmp_path):
    record = CheckRecord("2026-12-01T10:00:00", "device", "bash bench/gpu_check.sh", "NVIDIA H200", 321.0,
                         [StepResult("loss-curve", "ok", 40.2, 0), StepResult("fused-kernel", "skipped", 0.0, None, "absent")])
    path = tmp_path / "status.json"
    from dataclasses import asdict

    path.write_text(json.dumps(asdict(record)))
    assert CheckRecord.load(path) == record
    text = section(record, "## Loss curve: x\n\n| a |\n|---|\n\n### sub\n")
    assert text.startswith("## GPU check: NVIDIA H200 (2026-12-01T10:00:00)")
    assert "| loss-curve | ok | 40 s |  |" in text and "| fused-kernel | skipped | 0 s | absent |" in text
    assert "\n### Loss curve: x\n" in text and "\n#### sub" in text
    assert "\n## Loss curve" not in text


def test_loss_comparison_needs_agreement_and_a_falling_curve():
    reference = Curve("cpu", "float32", [6.0, 5.0, 3.0])
    close = Comparison.of(reference, Curve("gpu", "bfloat16", [6.0, 5.03, 2.99]))
    assert close.worst_step == 2 and close.max_abs == pytest.approx(0.03) and close.drop == 3.0
    assert close.passed(tolerance=0.05, min_drop=1.0)
    assert not close.passed(tolerance=0.02, min_drop=1.0)
    flat = Curve("cpu", "float32", [6.0, 6.0, 5.9])
    assert not Comparison.of(flat, flat).passed(tolerance=0.05, min_drop=1.0)
    with pytest.raises(ValueError):
        Comparison.of(reference, Curve("gpu", "bfloat16", [6.0]))


@pytest.mark.slow
def test_cpu_dry_run_reports_every_step(tmp_path):
    """The whole check at tiny size: every planned step reports, none fails, the tables land in
    the output folder and docs/benchmarks.md is left alone."""
    doc = REPO / "docs" / "benchmarks.md"
    before = doc.read_text()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=2400, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    record = CheckRecord.load(tmp_path / "status.json")
    planned = [s.name for s in gpu_check.plan(cpu=True, out=tmp_path)]
    assert [s.name for s in record.steps] == planned
    assert all(s.status in ("ok", "skipped") for s in record.steps), record.steps
    assert record.device == "cpu" and record.mode == "cpu dry run"
    ran = {s.name for s in record.steps if s.status == "ok"}
    assert {"environment", "loss-curve", "throughput-seq128", "throughput-seq256", "expand-5M-10M"} <= ran
    tables = (tmp_path / "tables.md").read_text()
    for heading in ("## Device environment", "## Loss curve", "## grow pretrain step throughput", "## grow expand"):
        assert heading in tables
    assert "**PASS**" in tables
    assert "===== loss-curve" in (tmp_path / "gpu_check.log").read_text()
    assert doc.read_text() == before
