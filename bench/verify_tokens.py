"""Benchmark: how many held-out tokens `grow expand --verify` needs for a loss jump stable to ±0.005.

The jump of AKI + stack is a small difference of two means over held-out sequences; measured on a
few sequences it is noisy (a user saw +0.027 on the old 4-sequence batch against +0.046 on 32K
tokens). This trains a small model on the shipped corpus (a 1024-token BPE, as examples/demo.sh
does), expands it with AKI + stack, runs both models once over the whole validation split (the
same `checkpoint_pass` `--verify` runs) and reads Δloss off its first N tokens, for N in
--counts and the whole split: beside each, the standard error over sequences and |Δ_N - Δ_all|.
The default of `--verify-tokens` must be the smallest N with both within 0.005; the script says
which N that is and whether it is the shipped default. Last, `grow expand --verify` itself is run
at the default and must report the same Δ as the prefix of the split read here.

Steps whose output exists in --work are skipped (re-runs only re-measure). A few minutes on CPU.
Results are printed and appended to docs/benchmarks.md.

    python bench/verify_tokens.py [--work /tmp/grow-verify-tokens] [--iters 300] [--counts 512,2048,8192,16384,32768,65536]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from benchdoc import append_section

REPO = Path(__file__).resolve().parents[1]
GROW = [sys.executable, "-m", "grow_cli"]
SEQ = 256  # what --verify uses for models of seq_len >= 256
TOLERANCE = 0.005
SOURCE = ["--size", "0.5M", "--seq-len", str(SEQ)]
TARGET = ["--hidden", "256", "--ffn", "896", "--layers", "4", "--heads", "16"]


def grow(*args: str) -> str:
    proc = subprocess.run([*GROW, *args], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"grow {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def prepare(work: Path, iters: int) -> tuple[str, Path, Path]:
    """Data prefix, trained source checkpoint and its AKI + stack expansion (made when missing)."""
    tokenizer, data, run, expanded = work / "tokenizer", work / "data" / "shakespeare", work / "run", work / "aki"
    if not (tokenizer / "tokenizer.json").exists():
        grow("data", "tokenizer", "--input", "shakespeare", "--max-documents", "12", "--vocab-size", "1024", "--out", str(tokenizer))
    if not Path(f"{data}.json").exists():
        grow("data", "prepare", "--input", "shakespeare", "--tokenizer", str(tokenizer / "tokenizer.json"),
             "--out", str(data), "--valid-fraction", "0.05")
    if not (run / "latest").exists():
        grow("pretrain", *SOURCE, "--iters", str(iters), "--global-batch", "16", "--micro-batch", "16", "--lr", "2e-3",
             "--warmup-iters", "10", "--data", str(data), "--out", str(run))
    if not expanded.exists():
        grow("expand", str(run / "latest"), *TARGET, "--out", str(expanded))
    return str(data), run / "latest", expanded


def measure(data: str, source: Path, target: Path):
    """Per-sequence losses of both models over the whole validation split."""
    from grow_cli.checkpoint.metadata import read_info
    from grow_cli.checkpoint.rundir import resolve_checkpoint
    from grow_cli.expansion.verify import checkpoint_pass, held_out_tokens
    from grow_cli.runtime.distributed import init_distributed, shutdown

    checkpoint = resolve_checkpoint(source)
    held_out = held_out_tokens(read_info(checkpoint).shape, data, tokens=10**9, seq_len=SEQ)
    init_distributed()
    try:
        return held_out, checkpoint_pass(checkpoint, held_out.tokens).losses, checkpoint_pass(target, held_out.tokens).losses
    finally:
        shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/grow-verify-tokens")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--counts", default="512,2048,8192,16384,32768,65536")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    from grow_cli.expansion.cli import DEFAULT_VERIFY_TOKENS
    from grow_cli.runtime.device import device_policy
    from grow_cli.expansion.verify import paired_difference

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, source, target = prepare(work, args.iters)
    held_out, first, second = measure(data, source, target)
    available = held_out.evaluated
    counts = [n for n in (int(c) for c in args.counts.split(",")) if n < available] + [available]
    whole = paired_difference(first, second)
    rows, chosen = [], None
    for n in counts:
        sequences = -(-n // SEQ)
        d = paired_difference(first[:sequences], second[:sequences])
        deviation = abs(d.mean - whole.mean)
        stable = deviation <= TOLERANCE and d.stderr is not None and d.stderr <= TOLERANCE
        if stable and chosen is None:
            chosen = n
        rows.append(f"| {n:,} | {sequences} | {first[:sequences].mean().item():.4f} | {second[:sequences].mean().item():.4f} | "
                    f"{d.mean:+.4f} | {d.stderr:.4f} | {deviation:.4f} | {'yes' if stable else 'no'} |")
    verdict = (f"smallest stable count: {chosen:,} tokens; shipped default {DEFAULT_VERIFY_TOKENS:,} "
               + ("is it" if chosen == DEFAULT_VERIFY_TOKENS else "is NOT it: change DEFAULT_VERIFY_TOKENS"))
    cli = json.loads(grow("expand", str(source), *TARGET, "--out", str(work / "aki-verify"), "--force", "--verify",
                          "--data", data, "--json"))["verify"]
    prefix = paired_difference(first[: cli["sequences"]], second[: cli["sequences"]])
    consistency = (f"`grow expand --verify` at the default: {cli['tokens']:,} tokens, Δ {cli['delta_loss']:+.4f} "
                   f"± {cli['delta_loss_stderr']:.4f} (the same prefix here: {prefix.mean:+.4f}; max |Δlogit| "
                   f"{cli['max_abs_dlogit']:.3g} over the first {cli['dlogit_tokens']:,} tokens)")
    table = ["| tokens | sequences | loss source | loss AKI+stack | Δloss | std. error | abs(Δ - Δ_all) | within 0.005 |",
             "|---:|---:|---:|---:|---:|---:|---:|---|", *rows]
    print("\n".join(table) + f"\n{verdict}\n{consistency}")
    command = f"python bench/verify_tokens.py --iters {args.iters} --counts {args.counts}"
    append_section("\n".join([
        f"## grow expand --verify: held-out tokens for a stable loss jump ({datetime.date.today().isoformat()})",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{'CUDA' if device_policy().cuda else 'CPU only'}; shared with other jobs",
        f"- models: `grow pretrain {' '.join(SOURCE)}` for {args.iters} steps of 16 x {SEQ} tokens on the shipped corpus "
        f"(1024-token BPE on 12 plays, `--valid-fraction 0.05`), expanded with AKI + stack to `{' '.join(TARGET)}`",
        f"- held-out: the first N tokens of the validation split ({available:,} tokens in {SEQ}-token sequences: "
        f"the last row is all of it); standard error = std of per-sequence Δ / sqrt(sequences)",
        f"- command: `{command}`",
        "",
        *table,
        "",
        f"- {verdict}",
        f"- {consistency}",
    ]))


if __name__ == "__main__":
    main()
