"""Benchmark: grow_kernels.linear_divergence (fused) vs the unfused loss, forward + backward.

K layers' hidden states ([K·T, h]) through the LM head ([V, h]) against a target, three ways,
each in a fresh subprocess on the same seeded inputs:

* fused:    grow_kernels.linear_divergence (Triton on CUDA, the PyTorch reference on CPU);
* unfused:  logits materialised ([K·T, V], plus the teacher's [T, V]), log-softmax, loss, torch
            eager autograd;
* compiled: torch.compile of the unfused function (compile time excluded: one warm-up call).

Target `forward` (default) / `reverse`: KL against a teacher given by its hidden states [T, h]
and head [V, h] (self-distillation; row k·T + t meets teacher row t); `labels`: cross-entropy.

Time: the fastest of --repeats timed forward+backward calls after one warm-up call. Peak memory
above the inputs and their gradients' buffers: on CUDA torch.cuda.max_memory_allocated; on CPU
the process RSS sampled every 2 ms by a thread (psutil), in a child started with glibc's
MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the RSS at once (the warm-up's memory
would otherwise stay mapped and hide the timed call's peak). A variant that runs out of memory
is reported as such.

    python bench/fused_kernel.py            # CUDA: K=17, T=8192, V=50257, h=2048, bf16
    python bench/fused_kernel.py --quick    # CPU: a scaled-down shape, fp32, about a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchdoc import append_section
from eval_lens import PeakRSS

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("fused", "unfused", "compiled")
QUICK = {"layers": 4, "tokens": 512, "vocab": 8192, "hidden": 128, "token_chunk": 256, "vocab_chunk": 1024, "repeats": 2}


def unfused_loss(hidden, head, labels, teacher_hidden, teacher_head, target: str):
    """Per-row loss with every logit in memory: what the fused op avoids."""
    import torch

    logits = (hidden @ head.T).float()
    if target == "labels":
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    tokens = teacher_hidden.size(0)
    log_p = logits.log_softmax(-1).view(-1, tokens, logits.size(-1))  # [K, T, V]
    with torch.no_grad():
        log_q = (teacher_hidden @ teacher_head.T).float().log_softmax(-1)  # [T, V], shared by the K layers
    pair = (log_q, log_p) if target == "forward" else (log_p, log_q)
    return (pair[0].exp() * (pair[0] - pair[1])).sum(-1).reshape(-1)


def worker(args) -> dict:
    """One variant in this (fresh) process."""
    import torch

    from grow_kernels import linear_divergence

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    rows = args.layers * args.tokens
    hidden = (torch.randn(rows, args.hidden, device=device) / 4).to(dtype).requires_grad_()
    head = (torch.randn(args.vocab, args.hidden, device=device) / args.hidden**0.25).to(dtype).requires_grad_()
    teacher_hidden = (torch.randn(args.tokens, args.hidden, device=device) / 4).to(dtype)
    teacher_head = (torch.randn(args.vocab, args.hidden, device=device) / args.hidden**0.25).to(dtype)
    labels = torch.randint(0, args.vocab, (rows,), device=device)
    weights = torch.rand(rows, device=device)

    if args.impl == "fused":
        target = {"labels": labels} if args.target == "labels" else {
            "teacher_hidden": teacher_hidden, "teacher_head": teacher_head, "direction": args.target}

        def loss_fn():
            return linear_divergence(hidden, head, token_chunk=args.token_chunk, vocab_chunk=args.vocab_chunk, **target).loss
    else:
        function = torch.compile(unfused_loss) if args.impl == "compiled" else unfused_loss

        def loss_fn():
            return function(hidden, head, labels, teacher_hidden, teacher_head, args.target)

    def step() -> float:
        hidden.grad = head.grad = None
        loss = (loss_fn() * weights).sum()
        loss.backward()
        return loss.item()

    try:
        value = step()  # warm-up: compilation, allocator, Triton autotuning caches
        hidden.grad = head.grad = None
        seconds, peak = [], 0.0
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                started = time.perf_counter()
                step()
                torch.cuda.synchronize()
                seconds.append(time.perf_counter() - started)
                peak = max(peak, (torch.cuda.max_memory_allocated() - before) / 2**20)
            else:
                with PeakRSS() as sampler:
                    before = sampler.peak
                    started = time.perf_counter()
                    step()
                    seconds.append(time.perf_counter() - started)
                peak = max(peak, (sampler.peak - before) / 2**20)
                hidden.grad = head.grad = None
    except torch.OutOfMemoryError:
        return {"impl": args.impl, "oom": True}
    return {"impl": args.impl, "rows": rows, "seconds": min(seconds), "peak_mib": peak, "loss": value,
            "device": device.type, "dtype": str(dtype).removeprefix("torch.")}


def run_child(args, impl: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--impl", impl, "--target", args.target, "--repeats", str(args.repeats),
               *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("layers", "tokens", "vocab", "hidden", "token_chunk", "vocab_chunk"))]
    env = dict(os.environ, PYTHONWARNINGS="ignore", MALLOC_MMAP_THRESHOLD_="65536")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), wall_s=time.perf_counter() - started)


def table(results: list[dict], args) -> list[str]:
    unfused = next(r for r in results if r["impl"] == "unfused")
    lines = [
        "| variant | rows K·T | fwd+bwd (ms) | rows/s | peak memory (MiB above inputs) | memory vs unfused | time vs unfused | loss rel. diff vs unfused |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.get("oom"):
            lines.append(f"| {r['impl']} | {args.layers * args.tokens} | out of memory | | | | | |")
            continue
        base = "oom" not in unfused
        memory = f"{r['peak_mib'] / unfused['peak_mib']:.3f}x" if base and unfused["peak_mib"] > 0 else "-"
        speed = f"{r['seconds'] / unfused['seconds']:.2f}x" if base else "-"
        diff = f"{abs(r['loss'] - unfused['loss']) / abs(unfused['loss']):.1e}" if base else "-"
        lines.append(f"| {r['impl']} | {r['rows']:,} | {1000 * r['seconds']:,.1f} | {r['rows'] / r['seconds']:,.0f} | "
                     f"{r['peak_mib']:,.1f} | {memory} | {speed} | {diff} |")
    logits_mib = args.layers * args.tokens * args.vocab * 4 / 2**20
    lines += ["", f"- one fp32 [K·T, V] logits tensor at this shape: {logits_mib:,.0f} MiB"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=17, help="K, layers stacked per token")
    parser.add_argument("--tokens", type=int, default=8192, help="T")
    parser.add_argument("--vocab", type=int, default=50257, help="V")
    parser.add_argument("--hidden", type=int, default=2048, help="h")
    parser.add_argument("--token-chunk", type=int, default=512, help="fused: token tile (the op's default)")
    parser.add_argument("--vocab-chunk", type=int, default=8192, help="fused: vocabulary tile (the op's default)")
    parser.add_argument("--target", choices=("forward", "reverse", "labels"), default="forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help=f"CPU-sized shape {QUICK}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    results = []
    for impl in args.variants.split(","):
        results.append(run_child(args, impl))
        print(json.dumps(results[-1]), flush=True)
    lines = table(results, args)
    print("\n".join(lines))
    if not args.no_doc:
        append_doc(args, results, lines)


def append_doc(args, results: list[dict], lines: list[str]) -> None:
    import torch

    first = next((r for r in results if "device" in r), {"device": "?", "dtype": "?"})
    memory = ("torch.cuda.max_memory_allocated" if first["device"] == "cuda" else
              "process RSS sampled every 2 ms (psutil), MALLOC_MMAP_THRESHOLD_=65536, fresh subprocess per variant")
    command = "python bench/fused_kernel.py" + (" --quick" if args.quick else "") + (
        f" --target {args.target}" if args.target != "forward" else "")
    title = (f"## kernels: fused linear + log-softmax + {'cross-entropy' if args.target == 'labels' else args.target + ' KL'} "
             f"vs unfused, forward + backward ({datetime.date.today().isoformat()})")
    facts = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
        f"torch {torch.__version__}; device {first['device']}, {first['dtype']}",
        f"shape: K={args.layers} layers x T={args.tokens} tokens, V={args.vocab}, h={args.hidden}; "
        f"fastest of {args.repeats} timed calls after a warm-up; fused tiles {args.token_chunk} x {args.vocab_chunk} "
        "(the reference's; Triton caps its blocks at 64 x 128)",
        f"peak memory: {memory}",
        f"command: `{command}`",
    ]
    append_section("\n".join([title, "", *(f"- {fact}" for fact in facts), "", *lines]) + "\n")


if __name__ == "__main__":
    main()
