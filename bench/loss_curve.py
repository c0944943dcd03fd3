"""Correctness on a device: does bf16 training track the fp32 CPU loss curve?

A tiny model (the real training step: `grow_cli.training.engine.Engine`, megatron-core GPTModel,
DDP, distributed optimizer, AdamW, warmup + cosine) is trained twice from the same initial
weights on the same batches: once on the CPU in fp32 (the reference) and once on the device in
the dtype under test. The per-step losses are compared; the run fails when any step differs by
more than `--tolerance` nats, or when the reference curve does not fall (a curve that never moves
would agree with anything).

The data is learnable on purpose: every sequence is an arithmetic progression modulo the
vocabulary, (start + stride * i) mod V, so the loss falls from ln V towards zero within a few
dozen steps and the two curves are compared where they move. The initial weights come from one
fp32 checkpoint (rounded to bf16, so the bf16 run starts where the fp32 run does) that both runs
load through `--init`'s code path (`load_model_weights`).

Each part runs in its own process (megatron's parallel state is one per process; the CPU
reference hides the GPU with CUDA_VISIBLE_DEVICES=""):

    python bench/loss_curve.py [--steps 50] [--dtype bf16] [--tolerance 0.05] [--no-doc]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from benchdoc import append_section

SEED = 1234
VOCAB = 512
STRIDES = 7  # strides 1..7: the model must read two tokens to know the sequence


@dataclass(frozen=True)
class Curve:
    """One run's per-step training losses and where it ran."""

    device: str
    dtype: str
    losses: list[float]


@dataclass(frozen=True)
class Comparison:
    """How far the device curve is from the reference, step by step."""

    max_abs: float
    mean_abs: float
    worst_step: int
    drop: float  # reference loss at the first step minus at the last

    @classmethod
    def of(cls, reference: Curve, device: Curve) -> "Comparison":
        diffs = [abs(a - b) for a, b in zip(reference.losses, device.losses, strict=True)]
        worst = max(range(len(diffs)), key=diffs.__getitem__)
        return cls(diffs[worst], sum(diffs) / len(diffs), worst + 1, reference.losses[0] - reference.losses[-1])

    def passed(self, tolerance: float, min_drop: float) -> bool:
        return self.max_abs <= tolerance and self.drop >= min_drop


def tiny_shape():
    from grow_cli.shape import ModelShape

    return ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=2, head_dim=16, vocab=VOCAB, seq_len=64)


def progressions(shape, micro_batch: int, steps: int) -> list[dict]:
    """`steps` micro-batches of arithmetic progressions mod V, built on the CPU from one seed."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    positions = torch.arange(shape.seq_len + 1)
    batches = []
    for _ in range(steps):
        start = torch.randint(0, shape.vocab, (micro_batch, 1), generator=generator)
        stride = torch.randint(1, STRIDES + 1, (micro_batch, 1), generator=generator)
        tokens = (start + stride * positions) % shape.vocab
        batches.append(
            {
                "tokens": tokens[:, :-1].contiguous(),
                "labels": tokens[:, 1:].contiguous(),
                "loss_mask": torch.ones(micro_batch, shape.seq_len),
                "position_ids": positions[:-1].expand(micro_batch, -1).contiguous(),
            }
        )
    return batches


def make_config(args, dtype: str, init: str | None):
    from grow_cli.training.config import (
        BatchSettings,
        IntervalSettings,
        ModelSettings,
        OptimizerSettings,
        ParallelSettings,
        TrainConfig,
    )
    from grow_cli.layout import Layout

    shape = tiny_shape()
    return TrainConfig(
        model=ModelSettings(shape, "tiny", float(shape.param_counts().nonembedding), "sdpa", dtype),
        parallel=ParallelSettings(Layout(tp=1, pp=1, dp=1), distributed_optimizer=True),  # one process
        optimizer=OptimizerSettings(lr=args.lr, min_lr=args.lr / 10, warmup_iters=5),
        batch=BatchSettings(args.micro_batch, args.micro_batch, train_iters=args.steps),
        intervals=IntervalSettings(),
        data="arithmetic progressions",
        out=Path(tempfile.gettempdir()),
        seed=SEED,
        init=init,
    )


# ---- children ------------------------------------------------------------------------------------
def write_init(args) -> None:
    """The shared initial weights: megatron's own init on the CPU, rounded to bf16, saved fp32."""
    import torch

    from grow_cli.checkpoint.metadata import CheckpointInfo
    from grow_cli.checkpoint.model_io import save_model_checkpoint
    from grow_cli.runtime.distributed import init_distributed, shutdown
    from grow_cli.runtime.model import build_gpt_model

    runtime = init_distributed(seed=SEED)
    try:
        torch.manual_seed(SEED)
        model = build_gpt_model(tiny_shape(), runtime.layout)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.to(torch.bfloat16).float())
        save_model_checkpoint(args.path, model, CheckpointInfo(shape=tiny_shape()))
    finally:
        shutdown()


def train(args) -> None:
    """Train from `args.path` and write the per-step losses to `args.result` as a Curve."""
    import torch

    from grow_cli.runtime.distributed import init_distributed, shutdown
    from grow_cli.training.engine import Engine
    from grow_cli.training.objective import LanguageModeling

    runtime = init_distributed(seed=SEED)
    try:
        torch.manual_seed(SEED)
        engine = Engine(make_config(args, args.dtype, args.path), runtime, LanguageModeling())
        batches = iter(progressions(tiny_shape(), args.micro_batch, args.steps))
        losses = [engine.train_step(batches).mean("lm loss") for _ in range(args.steps)]
        device = torch.cuda.get_device_name() if runtime.device.type == "cuda" else "cpu"
        dtype = str(next(engine.gpt.parameters()).dtype).removeprefix("torch.")  # what ran, not what was asked
        Path(args.result).write_text(json.dumps(asdict(Curve(device, dtype, losses))))
    finally:
        shutdown()


CHILDREN = {"init": write_init, "train": train}


# ---- parent --------------------------------------------------------------------------------------
def spawn(mode: str, args, *, cpu: bool, **extra) -> None:
    cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--micro-batch", str(args.micro_batch),
           "--lr", str(args.lr)]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="") if cpu else dict(os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"loss_curve {mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def render(args, command: str, reference: Curve, device: Curve, result: Comparison, passed: bool) -> str:
    shown = sorted({1, 2, 5, 10, 20, 30, 40, args.steps} & set(range(1, args.steps + 1)))
    rows = [
        f"| {step} | {reference.losses[step - 1]:.4f} | {device.losses[step - 1]:.4f} | "
        f"{device.losses[step - 1] - reference.losses[step - 1]:+.4f} |"
        for step in shown
    ]
    return "\n".join([
        f"## Loss curve: {device.dtype} on {device.device} vs {reference.dtype} on the CPU ({datetime.date.today().isoformat()})",
        "",
        f"- command: `{command}`",
        f"- model: tiny {tiny_shape().describe()}, vocab {VOCAB}; {args.steps} steps of {args.micro_batch} sequences "
        f"of arithmetic progressions mod {VOCAB}; AdamW lr {args.lr:g}, warmup 5, cosine; the same initial weights "
        "(bf16-rounded) and batches for both runs",
        f"- result: **{'PASS' if passed else 'FAIL'}**: max |difference| {result.max_abs:.4f} nats at step "
        f"{result.worst_step} (tolerance {args.tolerance:g}), mean {result.mean_abs:.4f}; the reference fell "
        f"{result.drop:.2f} nats (at least {args.min_drop:g} required)",
        "",
        f"| step | {reference.dtype} CPU loss | {device.dtype} {device.device} loss | difference |",
        "|---|---|---|---|",
        *rows,
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="dtype of the run under test")
    parser.add_argument("--tolerance", type=float, default=0.05, help="largest per-step |loss difference| in nats")
    parser.add_argument("--min-drop", type=float, default=1.0, help="nats the reference curve must fall")
    parser.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](args)
        return

    command = " ".join(["python", "bench/loss_curve.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as work:
        init, ref_json, dev_json = Path(work, "init"), Path(work, "reference.json"), Path(work, "device.json")
        spawn("init", args, cpu=True, path=init)
        spawn("train", args, cpu=True, path=init, dtype="fp32", result=ref_json)
        spawn("train", args, cpu=False, path=init, dtype=args.dtype, result=dev_json)
        reference, device = (Curve(**json.loads(p.read_text())) for p in (ref_json, dev_json))
    result = Comparison.of(reference, device)
    passed = result.passed(args.tolerance, args.min_drop)
    report = render(args, command, reference, device, result, passed)
    print(report)
    if not args.no_doc:
        append_section(report)
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
