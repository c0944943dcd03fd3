"""Fault injection: concurrent jobs, kills during a save, damaged and truncated checkpoints,
read-only and full directories, malformed plans and data. Each test asserts the one-line message,
the exit code, and that nothing the user had was lost or changed (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grow_cli.checkpoint.integrity import CHECKSUMS_FILE, VERIFY_ENV, verify_checkpoint
from grow_cli.checkpoint.lock import output_lock
from grow_cli.errors import GrowError

from conftest import prepare_three_plays, run_grow

TINY = ["--hidden", "64", "--ffn", "176", "--layers", "2", "--heads", "4", "--kv-groups", "2", "--seq-len", "64"]
SCHEDULE = ["--iters", "8", "--global-batch", "4", "--micro-batch", "2", "--lr", "3e-3", "--warmup-iters", "2",
            "--eval-interval", "4", "--eval-iters", "1", "--save-interval", "4", "--quiet"]


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The single `error:` line of a refused command (exit 2, no traceback)."""
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-4000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return prepare_three_plays(tmp_path_factory.mktemp("data") / "shk")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data) -> Path:
    """A finished tiny run with checkpoints at iterations 4 and 8."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run_grow(["pretrain", *TINY, *SCHEDULE, "--data", data, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def flip(path: Path, start: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def biggest_item(checkpoint: Path) -> dict:
    record = json.loads((checkpoint / CHECKSUMS_FILE).read_text())
    return max((i for i in record["items"] if i["offset"] is not None), key=lambda i: i["length"])


# ---- 1, 3: one writer per output ---------------------------------------------------------
def test_a_second_job_on_a_locked_output_is_refused_naming_the_holder(run, data, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(copy)
    with output_lock(copy, "run directory"):
        proc = run_grow(["pretrain", *TINY, *SCHEDULE, "--data", data, "--out", str(copy)])
    one_line_error(proc, f"run directory {copy.absolute()} is being written by grow job PID {os.getpid()} on host {socket.gethostname()}")
    assert snapshot(copy) == before  # metrics, checkpoints and the record untouched


def test_the_lock_dies_with_its_holder_and_never_goes_stale(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from grow_cli.checkpoint.lock import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(GrowError, match=f"being written by grow job PID {holder.pid}"):
        with output_lock(out):
            pass
    holder.kill()
    holder.wait()
    with output_lock(out):  # the kernel released it with the process
        pass
    assert not (tmp_path / ".out.lock").exists()  # released locks leave no file


def test_concurrent_atomic_directories_never_mix(tmp_path):
    """Two writers race for one output: exactly one wins, the other is refused by name, and the
    output holds the winner's files only."""
    out = tmp_path / "X"
    script = (
        "import sys, time\nfrom grow_cli.checkpoint.atomic import atomic_directory\n"
        "seed = sys.argv[1]\n"
        f"with atomic_directory({str(out)!r}) as tmp:\n"
        "    (tmp / 'tensors').write_text(seed); time.sleep(2); (tmp / 'lineage').write_text(seed)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, seed], stderr=subprocess.PIPE, text=True) for seed in "12"]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    assert any("is being written by grow job PID" in err or "already exists" in err for _, err in results), results
    assert (out / "tensors").read_text() == (out / "lineage").read_text()
    assert not list(tmp_path.glob(".X.*incomplete"))


# ---- 2, 7, 11: integrity -----------------------------------------------------------------
def test_flipped_bytes_in_a_tensor_are_named_and_opt_out_reads_anyway(run, data, tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(run / "iter_0000008", checkpoint)
    assert verify_checkpoint(checkpoint)
    item = biggest_item(checkpoint)
    flip(checkpoint / item["file"], item["start"] + item["length"] // 2, 64 << 10)
    proc = run_grow(["eval", str(checkpoint), "--data", data, "--json", "--no-layers"])
    one_line_error(proc, f"{checkpoint}/{item['file']}: tensor {item['key']}", "does not match the checksum")
    unchecked = run_grow(["--no-verify-checksums", "eval", str(checkpoint), "--data", data, "--json", "--no-layers"])
    assert unchecked.returncode == 0, unchecked.stderr[-3000:]  # the opt-out really skips the check
    monkeypatch.setenv(VERIFY_ENV, "0")
    assert run_grow(["eval", str(checkpoint), "--data", data, "--json", "--no-layers"]).returncode == 0


def test_header_flip_and_truncation_are_one_line_errors(run, data, tmp_path):
    header, truncated = tmp_path / "header", tmp_path / "truncated"
    shutil.copytree(run / "iter_0000008", header)
    shutil.copytree(run / "iter_0000008", truncated)
    flip(header / "__0_0.distcp", 0, 64)  # the zip header of the first stored item
    shard = truncated / "__0_1.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    one_line_error(run_grow(["eval", str(header), "--data", data, "--no-layers"]), f"{header}/__0_0.distcp: tensor", "checksum")
    one_line_error(run_grow(["eval", str(truncated), "--data", data, "--no-layers"]), f"{shard} is truncated")


@pytest.mark.parametrize("damage", ["common.pt missing", "tensor bytes flipped"])
def test_resume_falls_back_to_the_newest_sound_checkpoint(run, data, tmp_path, damage):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    newest = copy / "iter_0000008"
    if damage == "common.pt missing":
        (newest / "common.pt").unlink()
    else:
        item = biggest_item(newest)
        flip(newest / item["file"], item["start"] + 100, 4096)
    proc = run_grow(["pretrain", *TINY, *[a for a in SCHEDULE if a != "--quiet"], "--data", data, "--out", str(copy)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert "iter_0000008 is unusable" in out and "resuming from iter_0000004" in out, out[-3000:]
    resumed = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in resumed if r.get("event") == "resume"][-1]["iteration"] == 4


# ---- 8, 9: read-only and full directories -------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, read_only: bool = False):
    """A tmpfs of `size` at `path` (root only); None where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_output_is_one_line(run, tmp_path):
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        if mount is None:
            pytest.skip("needs root to mount a read-only tmpfs (see test_os_errors_on_user_paths_are_one_line)")
        proc = run_grow(["expand", str(run), "--out", str(mount / "grown"), "--hidden", "96", "--ffn", "256", "--heads", "6", "--kv-groups", "3"])
        one_line_error(proc, str(mount), "read-only file system")


def test_os_errors_on_user_paths_are_one_line():
    from grow_cli.errors import user_path_error

    assert user_path_error(OSError(errno.EROFS, "Read-only file system", "/data/out")) == (
        "/data/out is on a read-only file system; choose a writable location"
    )
    assert "no space left" in user_path_error(OSError(errno.ENOSPC, "No space left", "/data/out"))
    assert user_path_error(OSError(errno.EIO, "I/O error")) is None  # no path: a bug keeps its traceback
    assert user_path_error(OSError(errno.ENOENT, "missing", "/opt/grow/x.py"), installed=("/opt/grow",)) is None


def test_disk_full_is_refused_before_writing_naming_directory_and_bytes(run, tmp_path, monkeypatch):
    with small_tmpfs(tmp_path / "full", "5m") as mount:
        target = mount or tmp_path / "full"
        if mount is None:  # not root: a file system that reports 5 MiB free
            import shutil as shutil_module

            real = shutil_module.disk_usage
            monkeypatch.setattr(shutil_module, "disk_usage", lambda p: real(p)._replace(free=5 << 20))
            from grow_cli.checkpoint.space import check_free_space

            with pytest.raises(GrowError, match=f"not enough disk space in {target}"):
                check_free_space(target, 8 << 20)
            return
        proc = run_grow(["expand", str(run), "--out", str(target / "grown"), "--hidden", "512", "--ffn", "1408",
                         "--heads", "32", "--kv-groups", "16", "--layers", "4"])
        line = one_line_error(proc, f"not enough disk space in {target}", "MiB free")
        assert "needs" in line
        assert not list(target.iterdir())  # nothing partial left behind


def test_a_write_that_hits_a_full_disk_names_the_directory(tmp_path):
    from grow_cli.checkpoint.space import disk_full_as_error

    with pytest.raises(GrowError, match=f"not enough disk space in {tmp_path}"):
        with disk_full_as_error(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed")
    with pytest.raises(RuntimeError, match="unrelated"):  # any other failure keeps its traceback
        with disk_full_as_error(tmp_path):
            raise RuntimeError("unrelated")


# ---- 6, 10: plan files -------------------------------------------------------------------
@pytest.fixture(scope="module")
def plan_text(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    proc = run_grow(["plan", "--sizes", "2M,4M", "--seq-len", "128", "--global-batch", "8", "--out", str(path)])
    assert proc.returncode == 0, proc.stderr
    return path.read_text()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["stages"][0]["shape"].update(hidden="abc"), "stages[0].shape.hidden must be an integer, got 'abc'"),
        (lambda d: d["stages"][1].pop("shape"), "incomplete grow plan file (missing stages[1].shape)"),
        (lambda d: d["stages"][0].update(train_iters=-5), "stages[0].train_iters must be positive, got -5"),
        (lambda d: d["stages"][1].update(tokens_scratch=-1e9), "stages[1].tokens_scratch must be positive"),
        (lambda d: d["stages"][0].update(global_bacth=256), "stages[0].global_bacth is not a field of stages[0] (did you mean 'global_batch'?)"),
        (lambda d: d["inputs"].update(sizes="2M"), "inputs.sizes must be a list"),
    ],
)
def test_malformed_plans_name_the_file_and_field(plan_text, tmp_path, edit, message):
    from grow_cli.planning.planfile import load_plan

    data = yaml.safe_load(plan_text)
    edit(data)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(GrowError) as error:
        load_plan(path)
    assert str(error.value).startswith(f"{path}") and message in str(error.value), str(error.value)


def test_malformed_plan_on_the_command_line(plan_text, tmp_path):
    data = yaml.safe_load(plan_text)
    data["stages"][0]["shape"]["hidden"] = "abc"
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    one_line_error(run_grow(["plan", "--show", str(path)]), str(path), "stages[0].shape.hidden must be an integer")


# ---- 5: data -----------------------------------------------------------------------------
def test_non_utf8_jsonl_names_the_line(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 latin-1"}\n')
    out = tmp_path / "prepared" / "bad"
    proc = run_grow(["data", "prepare", "--input", str(source), "--out", str(out), "--workers", "1"])
    one_line_error(proc, f"{source}:2 is not UTF-8")
    assert not out.parent.exists() or not list(out.parent.glob("bad*"))


# ---- 4, 12: kills and exact resume --------------------------------------------------------
@pytest.mark.slow
def test_kill_during_a_save_leaves_no_process_behind(data, tmp_path):
    import psutil

    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    args = [*TINY, "--iters", "200", "--global-batch", "4", "--micro-batch", "2", "--save-interval", "1", "--quiet"]
    trainer = subprocess.Popen([sys.executable, "-m", "grow_cli", "pretrain", *args, "--data", data, "--out", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(trainer.pid)
    children: list = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            children = parent.children(recursive=True)
        if len(children) >= 2:  # the writer's manager and a forked writer: mid-save
            break
        time.sleep(0.01)
    assert children, "the trainer never started a checkpoint writer"
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]


@pytest.mark.slow
def test_resume_restores_every_rng_stream(data, tmp_path):
    """Interrupted + resumed ends with the same RNG states (python, numpy, torch, megatron's
    tracker) as an uninterrupted run: a run with dropout would draw the same masks."""
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"
    base = ["pretrain", *TINY, *SCHEDULE, "--data", data]
    assert run_grow([*base, "--out", str(full)]).returncode == 0
    assert run_grow([*base, "--out", str(interrupted), "--exit-interval", "4"]).returncode == 0
    assert run_grow([*base, "--out", str(interrupted)]).returncode == 0
    script = Path(__file__).parent / "scripts" / "rng_states.py"
    proc = subprocess.run([sys.executable, str(script), str(full / "iter_0000008"), str(interrupted / "iter_0000008")],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split()[-1] == "equal", proc.stdout
