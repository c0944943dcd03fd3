"""`grow pretrain` / `grow slurm`: the megatron-core loop on real text, exact resume, resharded resume,
pre-emption, what the model is fed, settings resolution and bad inputs.

References are independent of the code under test: megatron-core itself (the same run
uninterrupted, the same checkpoint at another TP), the data layer's samples rebuilt alone,
closed forms (cosine schedule, iteration counts), the real CLI parser.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from grow_cli.errors import GrowError
from grow_cli.runtime.cpu_compat import CPU
from grow_cli.runtime.device import CUDA
from grow_cli.training.config import resolve_config
from grow_cli.training.options import PretrainOptions

from conftest import prepare_three_plays, run_grow, run_ranks

SCRIPTS = Path(__file__).parent / "scripts"
TINY = ["--hidden", "64", "--ffn", "176", "--layers", "2", "--heads", "4", "--kv-groups", "2", "--seq-len", "64"]
SCHEDULE = ["--iters", "20", "--global-batch", "8", "--micro-batch", "2", "--lr", "3e-3", "--warmup-iters", "2",
            "--log-interval", "1", "--eval-interval", "10", "--eval-iters", "2", "--save-interval", "10", "--quiet"]


def tiny_options(data: str, out: str, **changes) -> PretrainOptions:
    base = dict(data=data, out=out, hidden=64, ffn=176, layers=2, heads=4, kv_groups=2, seq_len=64, iters=20,
                global_batch=8, micro_batch=2, lr=3e-3, warmup_iters=2)
    base.update(changes)
    return PretrainOptions(**base)


def train(data: str, out: Path, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    proc = run_grow(["pretrain", *TINY, *SCHEDULE, "--data", data, "--out", str(out), *extra], nproc=nproc)
    assert proc.returncode == 0, f"grow pretrain failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def records(out: Path, kind: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(out: Path, kind: str = "train") -> dict[int, float]:
    return {r["iteration"]: r["loss"] for r in records(out, kind)}


# ---- shared runs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """Three Shakespeare plays, GPT-2 BPE: two train documents, one valid."""
    return prepare_three_plays(tmp_path_factory.mktemp("data") / "shk")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> dict[str, Path]:
    """TP=2 uninterrupted; TP=2 stopped at 10 and resumed; the iter-10 checkpoint resumed at PP=2."""
    root = tmp_path_factory.mktemp("runs")
    full, interrupted, pipelined = root / "full", root / "interrupted", root / "pipelined"
    train(data, full, "--tp", "2")
    train(data, interrupted, "--tp", "2", "--exit-interval", "10")
    shutil.copytree(interrupted, pipelined)
    train(data, interrupted, "--tp", "2")
    train(data, pipelined, "--pp", "2")
    return {"full": full, "interrupted": interrupted, "pipelined": pipelined}


@pytest.mark.slow
def test_loss_goes_down_on_real_text_at_tp2_and_pp2(runs):
    full = losses(runs["full"])
    assert sorted(full) == list(range(1, 21))
    assert full[1] == pytest.approx(math.log(50257), abs=0.3)  # a fresh model guesses uniformly
    assert full[20] < full[1] - 1.5
    valid = losses(runs["full"], "valid")
    assert sorted(valid) == [10, 20] and valid[20] < valid[10]
    pipelined = losses(runs["pipelined"])
    assert pipelined[20] < pipelined[11] - 0.5  # PP=2 keeps learning
    summary = json.loads((runs["full"] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iteration"] == 20
    assert summary["tokens"] == 20 * 8 * 64 and summary["layout"] == {"tp": 2, "pp": 1, "dp": 1}


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted_exactly(runs):
    assert losses(runs["interrupted"]) == losses(runs["full"])  # every step, bit for bit
    assert losses(runs["interrupted"], "valid") == losses(runs["full"], "valid")
    events = [r["event"] for r in records(runs["interrupted"], "run")]
    assert events == ["start", "resume"]
    latest = (runs["interrupted"] / "latest").read_text().strip()
    assert latest == "iter_0000020" and (runs["interrupted"] / latest / "metadata.json").is_file()


@pytest.mark.slow
def test_tp2_checkpoint_resumes_at_pp2(runs):
    """Weights, Adam state and schedule reshard TP=2 -> PP=2; the vocabulary padding is the same at
    both layouts, so the losses agree up to the reduction order of another layout."""
    full, pipelined = losses(runs["full"]), losses(runs["pipelined"])
    assert sorted(pipelined) == list(range(1, 21))
    assert all(pipelined[i] == full[i] for i in range(1, 11))  # the copied history
    for i in range(11, 21):
        assert pipelined[i] == pytest.approx(full[i], abs=2e-4)
    record = records(runs["pipelined"], "run")[-1]
    assert record["event"] == "resume" and record["layout"] == {"tp": 1, "pp": 2, "dp": 1}
    assert records(runs["pipelined"], "train")[-1]["lr"] == pytest.approx(records(runs["full"], "train")[-1]["lr"])


@pytest.mark.slow
def test_tp2_and_tp1_give_the_same_logits(runs, tmp_path):
    result = tmp_path / "logits.json"
    run_ranks([str(SCRIPTS / "train_logits.py"), str(runs["full"] / "iter_0000020"), str(result)])
    found = json.loads(result.read_text())
    assert found["padded"] == [51200, 51200]  # TP-independent padding
    assert found["max_abs_diff"] < 1e-4 * max(1.0, found["scale"])


@pytest.mark.slow
def test_checkpoint_holds_train_state_and_lineage(runs):
    from grow_cli.checkpoint.metadata import read_common, read_info

    path = runs["full"] / "iter_0000020"
    info = read_info(path)
    assert info.iteration == 20 and info.consumed_samples == 160
    assert [step.op for step in info.lineage] == ["pretrain"] and info.lineage[0].details.train_iters == 20
    common = read_common(path)
    assert common["train"]["scheduler"]["num_steps"] == 20 * 8  # the schedule counts samples
    assert common["train"]["layout"] == {"tp": 2, "pp": 1, "dp": 1}
    # --keep-last 2 (default): iter 10 and iter 20 stay
    assert sorted(p.name for p in runs["full"].glob("iter_*")) == ["iter_0000010", "iter_0000020"]


@pytest.mark.slow
def test_init_from_checkpoint_starts_fresh_with_lineage(runs, data, tmp_path):
    from grow_cli.checkpoint.metadata import read_common, read_info

    source = runs["full"] / "iter_0000020"
    out = tmp_path / "init"
    train(data, out, "--init", str(source), "--iters", "3", "--warmup-iters", "1", "--save-interval", "3", nproc=1)
    first = losses(out)[1]
    assert first < losses(runs["full"])[1] - 2.0  # trained weights, not a fresh init
    path = out / "iter_0000003"
    info = read_info(path)
    assert [s.op for s in info.lineage] == ["pretrain", "pretrain"]
    assert info.lineage[-1].source_id == read_info(source).checkpoint_id
    assert info.lineage[-1].source == str(source)
    common = read_common(path)
    assert info.iteration == 3 and common["train"]["scheduler"]["num_steps"] == 3 * 8  # a fresh schedule


@pytest.mark.slow
def test_trained_tokens_are_the_data_layers_samples(data, tmp_path):
    result = tmp_path / "tokens"
    run_ranks([str(SCRIPTS / "train_tokens.py"), data, str(tmp_path / "out"), str(result)])
    for rank in range(2):
        found = json.loads(Path(f"{result}.{rank}.json").read_text())
        assert found["micro_batches"] == found["expected"] == 6
        assert found["mismatched"] == [] and found["shifted"]


@pytest.mark.slow
def test_stop_signal_on_one_rank_checkpoints_all_and_exits_zero(data, tmp_path):
    import psutil

    out = tmp_path / "preempt"
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["pretrain", *TINY, *SCHEDULE, "--iters", "400", "--save-interval", "1000", "--eval-interval", "1000",
            "--data", data, "--out", str(out), "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "grow_cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        while not (out / "metrics.jsonl").is_file() or len(records(out, "train")) < 2:
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.5)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        assert len(workers) == 1
        os.kill(workers[0].pid, signal.SIGUSR1)  # only rank 1 is told
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-4000:]
    summary = json.loads(stdout[stdout.index("{"):])
    stopped = summary["iteration"]
    assert summary["status"] == "preempted" and 2 <= stopped < 400
    assert (out / "latest").read_text().strip() == f"iter_{stopped:07d}"
    assert [p.name for p in out.glob("iter_*")] == [f"iter_{stopped:07d}"]
    assert max(losses(out)) == stopped


# ---- settings (no processes) ----------------------------------------------------------------
def test_plan_stage_settings_and_token_budget(data, tmp_path):
    plan = tmp_path / "plan.yaml"
    proc = run_grow(["plan", "--sizes", "2M,4M", "--seq-len", "64", "--global-batch", "16", "--out", str(plan)])
    assert proc.returncode == 0, proc.stderr
    from grow_cli.planning.planfile import load_plan

    stage = load_plan(plan).stage(2)
    config = resolve_config(PretrainOptions(data=data, out=str(tmp_path / "o"), plan=str(plan), stage="2", from_scratch=True), world_size=1, device=CPU)
    assert config.shape == stage.shape and config.stage == "4M"
    assert config.batch.train_iters == math.ceil(stage.tokens_incremental / (16 * 64))
    assert (config.optimizer.lr, config.optimizer.min_lr, config.optimizer.warmup_iters) == (stage.lr, stage.min_lr, stage.warmup_iters)
    assert config.model.dtype == "fp32" and not config.parallel.sequence_parallel
    short = resolve_config(PretrainOptions(data=data, out="o", plan=str(plan), stage="4M", iters=50, tokens=None, from_scratch=True), world_size=1, device=CPU)
    assert short.optimizer.warmup_iters == round(stage.warmup_iters * 50 / stage.train_iters)
    budget = resolve_config(PretrainOptions(data=data, out="o", plan=str(plan), stage="1", tokens="1M"), world_size=4, device=CUDA)
    assert budget.batch.train_iters == math.ceil(1e6 / (16 * 64)) and budget.parallel.layout.dp == 4
    assert budget.model.dtype == "bf16"


def test_resolution_is_pure_and_a_grown_stage_needs_its_start(tmp_path):
    """`resolve` decides from objects alone (no data, plan or checkpoint on disk)."""
    from grow_cli.data.info import DataInfo, SplitInfo
    from grow_cli.data.tokenizer_record import TokenizerRecord
    from grow_cli.layout import Layout
    from grow_cli.planning.planner import PlanRequest, build_plan
    from grow_cli.training.config import RunInputs, resolve

    plan = build_plan(PlanRequest(sizes=("2M", "4M"), tokens_per_param=20.0, seq_len=64, global_batch=16, layout=Layout(tp=2)))
    first, second = plan.stages
    tokenizer = TokenizerRecord(kind="tiktoken", name="gpt2", vocab_size=second.shape.vocab, eos="<|endoftext|>", eos_id=0)
    data = DataInfo(prefix=str(tmp_path / "nowhere"), tokenizer=tokenizer, dtype="uint16",
                    seed=0, valid_fraction=0.1, sources=(), train=SplitInfo(1, 10**6), valid=SplitInfo(1, 10**4), fingerprint="-")
    options = PretrainOptions(data=data.prefix, out=str(tmp_path / "run"), plan="p.yaml", stage="2")
    with pytest.raises(GrowError, match=r"grows from 2M: give --init CKPT .*or --from-scratch"):
        resolve(options, RunInputs(data, second), world_size=8, device=CUDA)
    with pytest.raises(GrowError, match="contradict"):
        resolve(replace(options, init="ckpt", from_scratch=True), RunInputs(data, second), world_size=8, device=CUDA)
    grown = resolve(replace(options, init="ckpt"), RunInputs(data, second), world_size=8, device=CUDA)
    assert grown.init == str(Path("ckpt").resolve()) and grown.shape == second.shape
    assert grown.parallel.layout == Layout(tp=2, pp=1, dp=4) and grown.model.dtype == "bf16"
    assert grown.batch.train_iters == math.ceil(second.tokens_incremental / (16 * 64))
    scratch = resolve(replace(options, from_scratch=True, tp=1), RunInputs(data, second), world_size=1, device=CPU)
    assert scratch.init is None and scratch.parallel.layout == Layout() and scratch.model.dtype == "fp32"
    assert resolve(replace(options, stage="1"), RunInputs(data, first), world_size=2, device=CPU).init is None
    # --init's weights compute with their own RoPE and norm epsilon (no flag sets them): a Llama 3 base
    from grow_cli.checkpoint.metadata import CheckpointInfo
    from grow_cli.shape import RopeScaling

    llama = second.shape.with_(rope_theta=500000.0, rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), norm_eps=1e-6)
    continued = resolve(replace(options, init="ckpt"), RunInputs(data, second, parent=CheckpointInfo(llama)), world_size=8, device=CUDA)
    assert continued.shape == llama and grown.shape.rope_theta == 10000.0


def test_lr_schedule_is_warmup_then_cosine_over_samples(data, tmp_path):
    import torch

    from grow_cli.training.schedule import build_scheduler

    config = resolve_config(tiny_options(data, str(tmp_path), iters=40, lr=1e-3, min_lr=1e-4, warmup_iters=5), world_size=1, device=CPU)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    scheduler = build_scheduler(config, optimizer)
    for iteration in range(1, 41):
        scheduler.step(increment=config.batch.global_batch)
        if iteration <= 5:
            expected = 1e-3 * iteration / 5
        else:
            expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * (iteration - 5) / 35))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)


def test_run_directory_identity(data, tmp_path):
    from grow_cli.checkpoint.rundir import check_run_directory, write_run_record

    out = tmp_path / "run"
    config = resolve_config(tiny_options(data, str(out)), world_size=1, device=CPU)
    assert check_run_directory(config) is None  # does not exist yet
    write_run_record(config)
    assert check_run_directory(config) is None  # same run, nothing saved yet
    (out / "iter_0000010").mkdir()
    (out / "iter_0000010" / "metadata.json").write_text("{}")
    assert check_run_directory(config) == out / "iter_0000010"
    with pytest.raises(GrowError, match="drop --no-resume"):
        check_run_directory(resolve_config(tiny_options(data, str(out), resume=False), world_size=1, device=CPU))
    with pytest.raises(GrowError, match="another run"):
        check_run_directory(resolve_config(tiny_options(data, str(out), hidden=128), world_size=1, device=CPU))
    with pytest.raises(GrowError, match="global_batch=8"):
        check_run_directory(resolve_config(tiny_options(data, str(out), global_batch=16), world_size=1, device=CPU))
    # another layout and micro batch are the same run
    assert check_run_directory(resolve_config(tiny_options(data, str(out), micro_batch=4, tp=2), world_size=2, device=CPU))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(GrowError, match="holds other files"):
        check_run_directory(resolve_config(tiny_options(data, str(foreign)), world_size=1, device=CPU))


def test_metrics_truncation_and_throughput(tmp_path):
    from grow_cli.training.metrics import Throughput, truncate_records

    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "run", "iteration": 0}, {"kind": "train", "iteration": 5}, {"kind": "valid", "iteration": 10},
             {"kind": "train", "iteration": 10}, {"kind": "train", "iteration": 15}, {"kind": "run", "iteration": 10}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "tr')  # a line cut by a kill
    truncate_records(path, 10)
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines[:4] + lines[5:]
    t = Throughput.measure(tokens=8192, seconds=2.0, flops_per_token=3e9, devices=8, peak=989e12)
    assert t.tokens_per_s == 4096 and t.tflops_per_device == pytest.approx(4096 * 3e9 / 8 / 1e12)
    assert t.mfu == pytest.approx(4096 * 3e9 / 8 / 989e12)


def test_metrics_reader_tolerates_a_cut_line_and_keeps_order(tmp_path):
    from grow_cli.checkpoint.rundir import read_metrics

    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []  # not written yet
    records = [{"kind": "run", "iteration": 0}, *({"kind": "train", "iteration": i, "loss": 10.0 - i / 8} for i in range(1, 40)),
               {"kind": "valid", "iteration": 39, "loss": 5.5}]
    cut = '{"kind": "train", "itera'  # the last line of a killed job
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + cut)
    assert read_metrics(path) == records
    assert read_metrics(path, "valid") == records[-1:]
    assert read_metrics(path, "train") == [r for r in records if r["kind"] == "train"]
    # a read of the last 300 bytes starts inside a line: it is skipped, the whole lines after it are kept
    room, expected = 300 - len(cut), []
    for record in reversed(records):
        room -= len(json.dumps(record)) + 1
        if room < 0:
            break
        expected.insert(0, record)
    assert 2 < len(expected) < len(records)
    assert read_metrics(path, tail_bytes=300) == expected


def test_slurm_script_and_its_command_round_trip(data, tmp_path):
    import typer

    from grow_cli.app import app
    from grow_cli.training.cli import options_to_argv
    from grow_cli.training.slurm import SlurmJob, render_sbatch

    options = tiny_options(data, str(tmp_path / "run"), tp=2, resume=False, distributed_optimizer=False, quiet=True)
    argv = options_to_argv(options)
    command = typer.main.get_command(app).commands["pretrain"]
    parsed = command.make_context("pretrain", argv[1:]).params
    for name, value in vars(options).items():
        assert parsed[name] == value, name
    job = SlurmJob(nodes=4, gpus_per_node=8, out=tmp_path / "run", time="02:00:00", setup=("module load cuda",))
    script = render_sbatch(job, argv)
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --signal=USR1@120", "#SBATCH --requeue",
                 "--rdzv-backend=c10d", 'scontrol show hostnames "$SLURM_JOB_NODELIST"', "--nnodes=4 --nproc-per-node=8",
                 "scontrol requeue", "TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                 "module load cuda", "#SBATCH --time=02:00:00"):
        assert line in script, line
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_grow_slurm_writes_a_checked_script(data, tmp_path):
    out = tmp_path / "run"
    args = ["slurm", *TINY, "--iters", "100", "--global-batch", "32", "--data", data, "--out", str(out), "--nodes", "2",
            "--gpus-per-node", "8", "--tp", "2", "--json"]
    proc = run_grow(args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["layout"] == {"tp": 2, "pp": 1, "dp": 8} and result["script"] == str(out / "pretrain.sbatch")
    assert "-m grow_cli pretrain" in (out / "pretrain.sbatch").read_text()
    again = run_grow(args)  # refuses to replace the script
    assert again.returncode == 2 and "--force" in again.stderr
    bad = run_grow([*args[:-1], "--global-batch", "12"])  # 12 is not a multiple of micro 1 x DP 8
    assert bad.returncode == 2 and "not a multiple" in bad.stderr


# ---- bad inputs: one line, exit 2, nothing written -----------------------------------------
@pytest.fixture(scope="module")
def empty_data(data, tmp_path_factory) -> str:
    """A prepared prefix whose sidecar says it holds no training tokens."""
    prefix = tmp_path_factory.mktemp("empty") / "none"
    for suffix in ("_train.bin", "_train.idx", "_valid.bin", "_valid.idx"):
        shutil.copy(data + suffix, str(prefix) + suffix)
    sidecar = json.loads(Path(data + ".json").read_text())
    sidecar["train"] = {"documents": 0, "tokens": 0}
    Path(str(prefix) + ".json").write_text(json.dumps(sidecar))
    return str(prefix)


@pytest.mark.parametrize(
    "case, extra, env, message",
    [
        ("missing data", ["--data", "/nonexistent/prefix"], {}, "no prepared data"),
        ("empty data", ["--data", "EMPTY"], {}, "holds no training tokens"),
        ("no such plan stage", ["--plan", "PLAN", "--stage", "7"], {}, "has no stage '7'"),
        ("layout", ["--tp", "3"], {}, "cannot run at TP=3"),
        ("world size", ["--tp", "2"], {"WORLD_SIZE": "3"}, "world size 3 is not divisible"),
        ("batch", ["--global-batch", "7", "--micro-batch", "2"], {}, "not a multiple of micro batch"),
        ("slurm flag", ["--submit"], {}, "belong to `grow slurm`"),
        ("slurm allocation flag", ["--nodes", "2"], {}, "belong to `grow slurm`"),
        ("grown stage without --init", ["--plan", "PLAN", "--stage", "2"], {}, "give --init CKPT"),
    ],
)
def test_bad_input_is_one_line_exit_2(case, extra, env, message, data, empty_data, tmp_path, monkeypatch):
    plan = tmp_path / "plan.yaml"
    if "PLAN" in extra:
        assert run_grow(["plan", "--sizes", "2M,4M", "--seq-len", "64", "--out", str(plan)]).returncode == 0
    extra = [{"EMPTY": empty_data, "PLAN": str(plan)}.get(a, a) for a in extra]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    base = ["--data", data] if "--data" not in extra else []
    shape = [] if "--plan" in extra else TINY
    proc = run_grow(["pretrain", *shape, "--iters", "2", "--global-batch", "8", "--out", str(out), *base, *extra])
    assert proc.returncode == 2, (case, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], (case, proc.stderr[-2000:])
    assert not out.exists()


@pytest.mark.slow
def test_rerun_of_a_finished_run_leaves_its_record_untouched(runs, data, tmp_path):
    """The finished run's summary (losses, throughput) is known only to the run that trained: a
    re-run, at any layout, prints it and writes nothing (no resume record: no model was built)."""
    rerun = tmp_path / "full"
    shutil.copytree(runs["full"], rerun)
    names = ("summary.json", "metrics.jsonl", "run.json", "latest")
    before = {name: ((rerun / name).read_bytes(), (rerun / name).stat().st_mtime_ns) for name in names}
    recorded = json.loads((rerun / "summary.json").read_text())
    assert recorded["loss"] is not None and recorded["valid_loss"] is not None and recorded["tokens_per_s"] is not None
    proc = run_grow(["pretrain", *TINY, *SCHEDULE, "--data", data, "--out", str(rerun), "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == recorded
    assert {name: ((rerun / name).read_bytes(), (rerun / name).stat().st_mtime_ns) for name in names} == before
    assert sorted(p.name for p in rerun.iterdir()) == sorted(p.name for p in runs["full"].iterdir())


@pytest.mark.slow
def test_bad_checkpoint_and_occupied_directory(runs, data, tmp_path):
    before = sorted(p.name for p in runs["full"].iterdir())
    wrong_shape = run_grow(["pretrain", "--hidden", "128", "--ffn", "352", "--layers", "2", "--heads", "4",
                            "--seq-len", "64", "--iters", "2", "--data", data, "--out", str(tmp_path / "o"),
                            "--init", str(runs["full"] / "iter_0000020")])
    assert wrong_shape.returncode == 2 and "expand it" in wrong_shape.stderr
    other_run = run_grow(["pretrain", *TINY, "--layers", "4", "--iters", "2", "--data", data, "--out", str(runs["full"])])
    assert other_run.returncode == 2 and "holds another run" in other_run.stderr
    no_resume = run_grow(["pretrain", *TINY, *SCHEDULE, "--data", data, "--out", str(runs["full"]), "--no-resume"])
    assert no_resume.returncode == 2 and "already holds checkpoints" in no_resume.stderr
    assert sorted(p.name for p in runs["full"].iterdir()) == before
    assert not (tmp_path / "o").exists()
