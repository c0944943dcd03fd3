"""Benchmark: `grow distill` step throughput against `grow pretrain`'s on the same model.

A distillation step does what a pretraining step does plus the frozen teacher's forward and the
logit lens of every layer (K = layers student rows per token through the fused kernel, forward
and backward) instead of one cross-entropy. Both steps are the real ones
(`grow_cli.training.engine.Engine.train_step` with `LanguageModeling` and with `DistillObjective`)
on the same random-token batches, same shape, layout and speed settings, one after the other in
one process; the teacher is built from the student's initial weights (what `grow distill` does
with its checkpoint). Reported: step time, tokens/s, the ratio distill / pretrain, and on CUDA the
peak memory of each (the teacher's weights included).

    python bench/distill_throughput.py [--size 1B] [--seq-len 1024] [--layers N] [--micro-batch 4]
        [--global-batch 8] [--steps 10] [--warmup 2] [--tp 1] [--no-doc] [grow pretrain's speed knobs]

Defaults: CUDA the reference 1B shape at sequence 1024 in bf16; CPU a 4-layer h=64 model with the
GPT-2 vocabulary at sequence 256 in fp32 (the vocabulary makes the lens the dominant cost, as it is
for small models).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time
from pathlib import Path

from benchdoc import append_section
from pretrain_throughput import add_speed_arguments, make_config, random_batches

REPO = Path(__file__).resolve().parents[1]


def timed_steps(engine, batches, args, cuda: bool) -> tuple[float, float, float | None]:
    """(first step's primary loss, seconds per timed step, peak GiB on CUDA)."""
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    first = engine.train_step(batches).mean(engine.metric_names[0])
    for _ in range(args.warmup - 1):
        engine.train_step(batches)
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.train_step(batches)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.steps
    return first, seconds, torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def measure(args, runtime, config, distill: bool) -> dict:
    import torch
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from grow_cli.distill.config import DistillSettings
    from grow_cli.distill.objective import DistillObjective
    from grow_cli.dtypes import torch_dtype
    from grow_cli.runtime.model import build_gpt_model
    from grow_cli.training.engine import Engine
    from grow_cli.training.objective import LanguageModeling

    torch.manual_seed(config.seed)
    model_parallel_cuda_manual_seed(config.seed)
    objective = DistillObjective(config, DistillSettings("the student's initial weights", "")) if distill else LanguageModeling()
    engine = Engine(config, runtime, objective)
    note = None
    if distill:
        teacher = build_gpt_model(config.shape, runtime.layout, dtype=torch_dtype(config.model.dtype),
                                  attention=config.model.attention)
        teacher.load_state_dict(engine.gpt.state_dict())
        note = objective.use_teacher(teacher, runtime)[0]
    batches = random_batches(config.shape, config.batch.micro_batch, runtime.device)
    first, seconds, memory = timed_steps(engine, batches, args, runtime.policy.cuda)
    result = {"command": "grow distill" if distill else "grow pretrain", "first_loss": first, "step_s": seconds,
              "tokens_per_s": config.tokens_per_iter / seconds, "memory_gib": memory, "note": note}
    del engine, batches, objective
    gc.collect()
    if runtime.policy.cuda:
        torch.cuda.empty_cache()
    return result


def render(args, device: str, world: int, shape, name: str, dtype: str, command: str, results: list[dict]) -> str:
    pretrain, distill = results
    rows = []
    for r in results:
        memory = "-" if r["memory_gib"] is None else f"{r['memory_gib']:.1f} GiB"
        rows.append(f"| {r['command']} | {1000 * r['step_s']:.0f} ms | {r['tokens_per_s']:,.0f} | {memory} | {r['first_loss']:.4f} |")
    threads = ""
    if device == "cpu":
        import torch

        threads = f", {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    ratio = distill["step_s"] / pretrain["step_s"]
    return "\n".join(
        [
            f"## grow distill vs grow pretrain step throughput: {name} ({shape.describe()}), seq {shape.seq_len}, {dtype}",
            "",
            f"- date: {datetime.date.today().isoformat()}; device: {world} x {device}{threads}; "
            f"host: {platform.node() or 'unknown'}, Python {platform.python_version()}",
            f"- command: `{command}`",
            f"- batch: global {args.global_batch} x micro {args.micro_batch} sequences, TP={args.tp}; "
            f"{args.warmup} warm-up + {args.steps} timed steps on random tokens (data loading excluded)",
            f"- distill step = pretrain step + teacher forward (no_grad) + {shape.layers}-layer logit lens through the "
            f"fused kernel (forward and backward) + the movement term; {distill['note']}",
            f"- **distill / pretrain step time: {ratio:.2f}x** (first losses: pretrain cross-entropy, distill L1 + λ·L2 "
            "against a teacher equal to the student, so 0 plus the movement term)",
            "",
            "| step | time | tokens/s | peak memory | first loss |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", help="preset or size name (default: 1B on CUDA, a tiny shape on CPU)")
    parser.add_argument("--seq-len", type=int, help="default: 1024 on CUDA, 256 on CPU")
    parser.add_argument("--layers", type=int, help="override the shape's depth")
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--global-batch", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--dtype", choices=("bf16", "fp32"))
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    add_speed_arguments(parser)  # grow pretrain's speed knobs, both steps get the same
    args = parser.parse_args()
    if args.overlap_param_gather:
        parser.error("grow distill refuses --overlap-param-gather")
    args.overlap_param_gather = False
    args.pp, args.recompute, args.peak_tflops = 1, "none", None  # what make_config reads besides the batch

    from grow_cli.runtime.device import device_policy
    from grow_cli.runtime.distributed import init_distributed, shutdown
    from grow_cli.shape import ModelShape, resolve_shape
    from grow_cli.training.metrics import device_peak_flops

    cuda = device_policy().cuda
    seq_len = args.seq_len or (1024 if cuda else 256)
    if args.size or cuda:
        name, nominal, shape = resolve_shape(args.size or "1B", seq_len=seq_len)
    else:
        shape = ModelShape(hidden=64, ffn=176, layers=4, heads=4, kv_groups=4, head_dim=16, seq_len=seq_len)
        name, nominal = "tiny", float(shape.param_counts().nonembedding)
    if args.layers:
        shape = shape.with_(layers=args.layers)
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.micro_batch = args.micro_batch or 4
    args.global_batch = args.global_batch or 2 * args.micro_batch
    args.steps = args.steps or (10 if cuda else 5)
    args.warmup = max(1, args.warmup or 2)

    runtime = init_distributed(args.tp, 1, seed=1234)
    try:
        config = make_config(args, shape, name, nominal, "sdpa", dtype, runtime.layout.dp)
        results = [measure(args, runtime, config, distill=False), measure(args, runtime, config, distill=True)]
        device, _ = device_peak_flops(None)
        command = "python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]])
        if runtime.world_size > 1:
            command = f"torchrun --nproc-per-node {runtime.world_size} {command[len('python '):]}"
        report = render(args, device, runtime.world_size, shape, name, dtype, command, results)
        if runtime.is_main:
            print(report)
            if not args.no_doc:
                append_section(report)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
