"""Benchmark: training throughput of `grow pretrain` (tokens/s, model TFLOP/s, MFU), by attention kernel.

Times the real training step (`grow_cli.training.engine.Engine.train_step`: megatron-core GPTModel,
DDP, distributed optimizer, the forward/backward schedule, clipping, AdamW, LR schedule) on
random-token batches, so the number is the model's speed, not the data pipeline's. Every attention
kernel is measured in the same process, one after the other:

* CUDA: the reference 1B shape (h=2048, FFN 7168, 18 layers, 16 heads, d=128) at sequence 1024 in
  bf16, SDPA (flash/cuDNN) vs megatron's local attention (and Transformer Engine when installed);
* CPU: a tiny shape (h=64, 2 layers, GPT-2 vocabulary) at sequence 256 in fp32, so regressions in
  the step show up on any machine.

Model FLOPs follow Megatron-LM's per-token formula (`grow_cli.flops`); MFU divides by the
device's peak dense bf16 FLOP/s (`grow_cli.planning.hardware`; none on CPU). Results are printed as
a markdown table and appended as a section to docs/benchmarks.md. Runs alone or under torchrun:

    python bench/pretrain_throughput.py [--size 1B] [--seq-len 1024] [--micro-batch 4] [--global-batch 8]
        [--steps 20] [--warmup 5] [--attention sdpa,local] [--tp 1 --pp 1] [--peak-tflops N] [--no-doc]
        [grow pretrain's speed knobs: --cross-entropy te --no-fused-swiglu --compile --grad-dtype bf16 ...]

The speed knobs are `grow pretrain`'s own (the "Speed" panel of `PretrainOptions`, resolved by
`grow_cli.training.speed` with the same defaults and the same refusals); `--gpu` is not among
them here: the benchmark's micro batch is `--micro-batch`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchdoc import append_section

REPO = Path(__file__).resolve().parents[1]


def tiny_shape(seq_len: int):
    from grow_cli.shape import ModelShape

    return ModelShape(hidden=64, ffn=176, layers=2, heads=4, kv_groups=4, head_dim=16, seq_len=seq_len)


def speed_knobs() -> dict[str, tuple[str, str | None, type]]:
    """`grow pretrain`'s speed options (field -> flag, negative flag, value type), from their declarations."""
    from typing import get_args, get_type_hints

    from typer.models import OptionInfo

    from grow_cli.options import flags_of
    from grow_cli.training.options import SPEED, PretrainOptions

    knobs = {}
    hints = get_type_hints(PretrainOptions, include_extras=True)
    for name, (flag, negative) in flags_of(PretrainOptions).items():
        kind, *extras = get_args(hints[name])
        info = next(m for m in extras if isinstance(m, OptionInfo))
        if info.rich_help_panel == SPEED and name != "gpu":
            knobs[name] = (flag, negative, next((t for t in get_args(kind) if t is not type(None)), kind))
    return knobs


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (flag, negative, kind) in speed_knobs().items():
        if negative:
            parser.add_argument(flag, dest=name, action="store_const", const=True, default=None)
            parser.add_argument(negative, dest=name, action="store_const", const=False)
        else:
            parser.add_argument(flag, dest=name, type=kind)


def speed_settings(args, attention: str, dtype: str, layout):
    """The run's SpeedSettings exactly as `grow pretrain` resolves them from the same flags."""
    from grow_cli.runtime.device import device_policy
    from grow_cli.runtime.fusions import Extensions
    from grow_cli.training.options import PretrainOptions
    from grow_cli.training.speed import RunFacts, resolve_speed

    given = {name: getattr(args, name) for name in speed_knobs() if getattr(args, name) is not None}
    options = PretrainOptions(data="random tokens", out=tempfile.gettempdir(), attention=attention, dtype=dtype, **given)
    microbatches = args.global_batch // (args.micro_batch * layout.dp)
    return resolve_speed(options, device_policy(), Extensions.detect(), RunFacts(layout, dtype, microbatches, True))


def make_config(args, shape, name: str, nominal: float, attention: str, dtype: str, dp: int):
    from grow_cli.layout import Layout
    from grow_cli.training.config import (
        BatchSettings,
        IntervalSettings,
        ModelSettings,
        OptimizerSettings,
        ParallelSettings,
        TrainConfig,
    )

    layout = Layout(args.tp, args.pp, dp)
    return TrainConfig(
        model=ModelSettings(shape, name, nominal, attention, dtype, args.recompute),
        parallel=ParallelSettings(layout, sequence_parallel=False, distributed_optimizer=True),
        optimizer=OptimizerSettings(lr=1e-4, min_lr=1e-5, warmup_iters=0),
        batch=BatchSettings(args.global_batch, args.micro_batch, train_iters=args.warmup + args.steps),
        intervals=IntervalSettings(),
        data="random tokens",
        out=Path(tempfile.gettempdir()),
        seed=1234,
        speed=speed_settings(args, attention, dtype, layout),
    )


def random_batches(shape, micro_batch: int, device, count: int = 8):
    """An endless cycle of `count` random micro-batches already on the device."""
    import itertools

    import torch

    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        tokens = torch.randint(0, shape.vocab, (micro_batch, shape.seq_len + 1), generator=generator)
        batches.append(
            {
                "tokens": tokens[:, :-1].contiguous().to(device),
                "labels": tokens[:, 1:].contiguous().to(device),
                "loss_mask": torch.ones(micro_batch, shape.seq_len, device=device),
                "position_ids": torch.arange(shape.seq_len, device=device).expand(micro_batch, -1).contiguous(),
            }
        )
    return itertools.cycle(batches)


def measure(args, runtime, config) -> dict:
    import torch

    from grow_cli.training.engine import Engine
    from grow_cli.training.metrics import Throughput, device_peak_flops, model_flops_per_token
    from grow_cli.training.objective import LanguageModeling

    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    torch.manual_seed(config.seed)  # the same initial weights for every kernel: equal first losses
    model_parallel_cuda_manual_seed(config.seed)
    engine = Engine(config, runtime, LanguageModeling())
    batches = random_batches(config.shape, config.batch.micro_batch, runtime.device)
    cuda = runtime.policy.cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    first_loss = engine.train_step(batches).mean("lm loss")
    for _ in range(args.warmup - 1):
        engine.train_step(batches)
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.train_step(batches)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    _, peak = device_peak_flops(args.peak_tflops)
    throughput = Throughput.measure(
        args.steps * config.tokens_per_iter, seconds, model_flops_per_token(config), runtime.world_size, peak
    )
    result = {
        "attention": config.model.attention + _sdpa_kernels(engine),
        "step_s": seconds / args.steps,
        "tokens_per_s": throughput.tokens_per_s,
        "tflops": throughput.tflops_per_device,
        "mfu": throughput.mfu,
        "first_loss": first_loss,
        "memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    del engine, batches
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def _sdpa_kernels(engine) -> str:
    from grow_cli.runtime.attention import backends_used

    kernels = backends_used(engine.gpt)
    return f" ({'/'.join(kernels)})" if kernels else ""


def render(args, device: str, peak: float | None, world: int, shape, name: str, dtype: str, command: str,
           results: list[dict], speed: str) -> str:
    from grow_cli.training.metrics import FLOPS_CONVENTION

    rows = []
    for r in results:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        memory = "-" if r["memory_gib"] is None else f"{r['memory_gib']:.1f} GiB"
        rows.append(
            f"| {r['attention']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {mfu} | {1000 * r['step_s']:.0f} ms | "
            f"{memory} | {r['first_loss']:.4f} |"
        )
    threads = ""
    if device == "cpu":
        import torch

        threads = f", {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    return "\n".join(
        [
            f"## grow pretrain step throughput: {name} ({shape.describe()}), seq {shape.seq_len}, {dtype}",
            "",
            f"- date: {datetime.date.today().isoformat()}; device: {world} x {device}{threads}; "
            f"host: {platform.node() or 'unknown'}, Python {platform.python_version()}",
            f"- command: `{command}`",
            f"- batch: global {args.global_batch} x micro {args.micro_batch} sequences, TP={args.tp} PP={args.pp}; "
            f"{args.warmup} warm-up + {args.steps} timed steps on random tokens (data loading excluded)",
            f"- speed: {speed}",
            f"- model FLOPs: {FLOPS_CONVENTION} (Megatron-LM per-token formula, causal attention, padded vocab); "
            "MFU against the device's peak dense bf16 FLOP/s: "
            + ("none known" if peak is None else f"{peak / 1e12:.0f} TFLOP/s ({'--peak-tflops' if args.peak_tflops else 'datasheet, grow_cli.planning.hardware'})"),
            "",
            "| attention | tokens/s | model TFLOP/s per device | MFU | step | peak memory | first loss |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", help="preset or size name (default: 1B on CUDA, a tiny shape on CPU)")
    parser.add_argument("--seq-len", type=int, help="default: 1024 on CUDA, 256 on CPU")
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--global-batch", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--attention", default=None, help="comma-separated: sdpa,local[,te]")
    parser.add_argument("--dtype", choices=("bf16", "fp32"))
    parser.add_argument("--recompute", default="none", choices=("none", "selective", "full"))
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, help="MFU against this peak per device (e.g. a measured matmul rate)")
    parser.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    add_speed_arguments(parser)
    args = parser.parse_args()

    from grow_cli.runtime.device import device_policy
    from grow_cli.runtime.distributed import init_distributed, shutdown
    from grow_cli.runtime.model import have_transformer_engine
    from grow_cli.shape import resolve_shape
    from grow_cli.training.metrics import device_peak_flops

    cuda = device_policy().cuda
    seq_len = args.seq_len or (1024 if cuda else 256)
    if args.size or cuda:
        name, nominal, shape = resolve_shape(args.size or "1B", seq_len=seq_len)
    else:
        shape = tiny_shape(seq_len)
        name, nominal = "tiny", float(shape.param_counts().nonembedding)
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.micro_batch = args.micro_batch or 4
    args.global_batch = args.global_batch or 2 * args.micro_batch
    args.steps = args.steps or (20 if cuda else 10)
    args.warmup = max(1, args.warmup or (5 if cuda else 2))
    backends = args.attention.split(",") if args.attention else ["sdpa", "local"] + (["te"] if have_transformer_engine() else [])

    runtime = init_distributed(args.tp, args.pp, seed=1234)
    try:
        dp = runtime.layout.dp
        results = []
        for attention in backends:
            config = make_config(args, shape, name, nominal, attention, dtype, dp)
            results.append(measure(args, runtime, config))
        device, peak = device_peak_flops(args.peak_tflops)
        command = "python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]])
        if runtime.world_size > 1:
            command = f"torchrun --nproc-per-node {runtime.world_size} {command[len('python '):]}"
        report = render(args, device, peak, runtime.world_size, shape, name, dtype, command, results, config.speed.describe())
        if runtime.is_main:
            print(report)
            if not args.no_doc:
                append_section(report)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
