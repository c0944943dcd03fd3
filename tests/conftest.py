"""Shared test helpers: offline environment, tiny shapes, and running scripts under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("GROW_ASSETS", str(REPO / ".cache" / "assets"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# grow eval keeps results between runs (grow_cli.evaluation.cache): tests keep theirs to themselves.
os.environ.setdefault("GROW_EVAL_CACHE", tempfile.mkdtemp(prefix="grow-eval-cache-"))
# Without a GPU, Triton kernels run in Triton's interpreter (tests/test_kernels_divergence.py). Triton
# reads this when it is imported, and megatron-core imports it, so it is set before any test module.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def run_ranks(args: list[str], nproc: int = 2, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python args...` under torchrun with `nproc` gloo ranks; raise with its output on failure."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_grow(args: list[str], timeout: int = 600, cwd: Path | None = None, nproc: int = 1) -> subprocess.CompletedProcess:
    """Run the real `grow` console entry point (not raising on a non-zero exit)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if nproc == 1:
        cmd = [sys.executable, "-m", "grow_cli", *args]
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", "-m", "grow_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def prepare_three_plays(prefix: Path, *extra: str) -> str:
    """`grow data prepare` on three Shakespeare plays, split two train documents to one valid: the
    tests' small corpus (GPT-2 BPE unless `extra` names a tokenizer). Returns the prefix."""
    proc = run_grow(["data", "prepare", "--input", "shakespeare", "--out", str(prefix), "--max-documents", "3",
                     "--valid-fraction", "0.34", "--workers", "1", *extra])
    assert proc.returncode == 0, proc.stderr
    return str(prefix)


@pytest.fixture
def tiny_shape():
    from grow_cli.shape import ModelShape

    return ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=2, head_dim=16, vocab=1000, seq_len=32)


@pytest.fixture(scope="module")
def megatron_runtime():
    """megatron-core's parallel state for one process (TP=1, PP=1), torn down after the module."""
    from grow_cli.runtime.distributed import init_distributed, shutdown

    runtime = init_distributed(tp=1, pp=1)
    yield runtime
    shutdown()
