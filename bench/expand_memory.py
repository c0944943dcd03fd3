"""Benchmark: peak memory and wall time of `grow expand` on real-size checkpoints.

Writes a random bf16 source of the reference 1B shape as a torch_dist checkpoint (about 2.6 GB),
then measures, each in a fresh subprocess (peak RSS from getrusage in the child):

* stream: the streaming engine (`expand_checkpoint`), what `grow expand` runs, in one process
  and as 2 ranks under torchrun;
* naive:  load every source tensor, build every target tensor in memory, then save;
* floor:  the I/O floor, reading the source's files and writing the target's byte count (fsync);
* dcp:    the same DCP reads and writes as the engine with no growth math (the format's own cost).

Goals: peak RSS <= 3x one layer's tensors (source + target), wall <= 1.5x the I/O floor.
Results are printed and appended as a section to docs/benchmarks.md.

    python bench/expand_memory.py [--source 1B] [--target 2B] [--width aki] [--depth stack]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from benchdoc import append_section

REPO = Path(__file__).resolve().parents[1]
CHUNK = 16 << 20


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _shapes(args):
    from grow_cli.shape import resolve_shape

    return resolve_shape(args.source)[2], resolve_shape(args.target)[2]


def _layer_bytes(shape, dtype_size: int = 2) -> int:
    """Bytes of one transformer layer's tensors (what the memory goal is measured against)."""
    return shape.layer_params() * dtype_size


# ---- children --------------------------------------------------------------------------------
def make_source(args) -> dict:
    """Random bf16 weights of the source shape, written layer by layer (never whole in memory)."""
    import torch

    from grow_cli.checkpoint.layout import extra_state_objects, tensor_specs
    from grow_cli.checkpoint.metadata import COMMON_KEY, CheckpointInfo
    from grow_cli.checkpoint.tensors import Piece, layer_piece, write_checkpoint

    source, _ = _shapes(args)
    pieces = []
    for spec in tensor_specs(source, source.padded_vocab()):
        if spec.stacked:
            pieces += [layer_piece(spec.key, spec.shape, layer, torch.bfloat16) for layer in range(spec.shape[0])]
        else:
            pieces.append(Piece(spec.key, spec.shape, (0,) * len(spec.shape), spec.shape, torch.bfloat16))

    def produce(piece: Piece) -> torch.Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(f"{piece.key}{piece.offsets}".encode()))
        if "norm" in piece.key:
            return (1 + 0.1 * torch.randn(piece.sizes, generator=generator)).to(torch.bfloat16)
        return (0.02 * torch.randn(piece.sizes, generator=generator)).to(torch.bfloat16)

    out = Path(args.path)
    out.mkdir(parents=True)
    write_checkpoint(out, pieces, produce, common={COMMON_KEY: CheckpointInfo(shape=source).to_dict()},
                     objects=extra_state_objects(source))
    return {}


def run_floor(args) -> dict:
    """Read every file of the source once, write the target's byte count, fsync."""
    baseline = _peak_rss()
    start = time.perf_counter()
    read = 0
    for f in sorted(Path(args.path).iterdir()):
        with open(f, "rb") as handle:
            while block := handle.read(CHUNK):
                read += len(block)
    buffer = os.urandom(CHUNK)
    written = 0
    with open(args.out, "wb") as handle:
        while written < args.bytes:
            n = min(CHUNK, args.bytes - written)
            handle.write(buffer[:n])
            written += n
        handle.flush()
        os.fsync(handle.fileno())
    return {"seconds": time.perf_counter() - start, "bytes_read": read, "bytes_written": written, "baseline_rss": baseline}


def run_dcp_floor(args) -> dict:
    """The same DCP reads and writes as the engine (same pieces, same cache), no growth math:
    what the torch_dist format itself costs."""
    import torch

    from grow_cli.checkpoint.atomic import atomic_directory
    from grow_cli.checkpoint.metadata import read_info
    from grow_cli.checkpoint.tensors import CheckpointReader, write_checkpoint
    from grow_cli.expansion.engine import SourceCache, read_source
    from grow_cli.expansion.recipe import ExpandOptions, ExpansionRecipe

    _, target = _shapes(args)
    baseline = _peak_rss()
    start = time.perf_counter()
    reader = CheckpointReader(args.path)
    plan = ExpansionRecipe.for_checkpoint(reader, read_info(args.path).shape, target, ExpandOptions(width=args.width, depth=args.depth))
    cache = SourceCache(lambda read: read_source(reader, read))

    def produce(piece):
        for read in plan.reads(piece):
            cache(read)
        return torch.zeros(piece.sizes, dtype=piece.dtype)

    with atomic_directory(args.out) as tmp:
        write_checkpoint(tmp, plan.pieces(), produce, common={}, objects={})
    return {"seconds": time.perf_counter() - start, "bytes_read": reader.bytes_read,
            "bytes_written": plan.bytes_written(), "baseline_rss": baseline}


def run_stream(args) -> dict:
    """The engine; under torchrun every rank writes its share (gloo process group)."""
    import torch

    from grow_cli.expansion.engine import expand_checkpoint
    from grow_cli.expansion.recipe import ExpandOptions
    from grow_cli.runtime.env import world_size

    _, target = _shapes(args)
    if world_size() > 1:
        torch.distributed.init_process_group("gloo")
    baseline = _peak_rss()
    start = time.perf_counter()
    result = expand_checkpoint(args.path, args.out, target, ExpandOptions(width=args.width, depth=args.depth))
    seconds = time.perf_counter() - start
    if torch.distributed.is_initialized():
        # left to interpreter exit, gloo's threads can abort the rank ("terminate called without an active exception")
        torch.distributed.destroy_process_group()
    return {"seconds": seconds, "bytes_read": result.bytes_read,
            "bytes_written": result.bytes_written, "baseline_rss": baseline}


def run_naive(args) -> dict:
    """The obvious implementation: whole source in memory, whole target in memory, then save."""
    import torch

    from grow_cli.checkpoint.atomic import atomic_directory
    from grow_cli.checkpoint.metadata import COMMON_KEY, read_info
    from grow_cli.checkpoint.tensors import CheckpointReader, write_checkpoint
    from grow_cli.expansion.engine import target_info
    from grow_cli.expansion.recipe import ExpandOptions, ExpansionRecipe

    _, target = _shapes(args)
    baseline = _peak_rss()
    start = time.perf_counter()
    reader, info = CheckpointReader(args.path), read_info(args.path)
    source = {key: reader.read(key) for key in reader.tensor_keys()}
    plan = ExpansionRecipe.for_checkpoint(reader, info.shape, target, ExpandOptions(width=args.width, depth=args.depth))

    def fetch(read):
        return source[read.key] if read.layer is None else source[read.key][read.layer]

    grown: dict[str, torch.Tensor] = {}
    for piece in plan.pieces():
        if piece.key not in grown:
            grown[piece.key] = torch.empty(piece.global_shape, dtype=piece.dtype)
        index = tuple(slice(o, o + s) for o, s in zip(piece.offsets, piece.sizes))
        grown[piece.key][index] = plan.build(piece, fetch)

    def produce(piece):
        return grown[piece.key][tuple(slice(o, o + s) for o, s in zip(piece.offsets, piece.sizes))]

    with atomic_directory(args.out) as tmp:
        write_checkpoint(tmp, plan.pieces(), produce, common={COMMON_KEY: target_info(info, plan, Path(args.path), None).to_dict()},
                         objects=plan.objects())
    return {"seconds": time.perf_counter() - start, "bytes_read": reader.bytes_read,
            "bytes_written": plan.bytes_written(), "baseline_rss": baseline}


CHILDREN = {"make": make_source, "floor": run_floor, "dcp": run_dcp_floor, "stream": run_stream, "naive": run_naive}


def child(args) -> None:
    result = CHILDREN[args.child](args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(peak_rss=_peak_rss(), cpu_seconds=usage.ru_utime + usage.ru_stime)
    Path(args.result, f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))


# ---- parent ----------------------------------------------------------------------------------
def spawn(mode: str, args, ranks: int = 1, **extra) -> dict:
    """Run one measurement in fresh process(es); with `ranks` > 1 under torchrun (worst rank)."""
    launcher = [sys.executable]
    if ranks > 1:
        launcher = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={ranks}"]
    cmd = [*launcher, __file__, "--child", mode, "--source", args.source, "--target", args.target,
           "--width", args.width, "--depth", args.depth]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    threads = max(1, (os.cpu_count() or 1) // ranks)
    with tempfile.TemporaryDirectory() as result_dir:
        cmd += ["--result", result_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        if proc.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-4000:]}")
        results = [json.loads(f.read_text()) for f in sorted(Path(result_dir).glob("rank*.json"))]
    worst = max(results, key=lambda r: r["peak_rss"])
    return dict(worst, seconds=max(r.get("seconds", 0.0) for r in results), cpu_seconds=sum(r["cpu_seconds"] for r in results))


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.machine())
    mem = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) / 2**20
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="1B")
    parser.add_argument("--target", default="2B")
    parser.add_argument("--width", default="aki")
    parser.add_argument("--depth", default="stack")
    parser.add_argument("--workdir", default=str(REPO / ".cache" / "bench-expand"))
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement: fastest wall kept, largest peak RSS")
    parser.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    source_shape, target_shape = _shapes(args)
    src_bytes = source_shape.padded().param_counts().total * 2
    dst_bytes = target_shape.padded().param_counts().total * 2
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    free = shutil.disk_usage(work).free
    need = int(1.2 * (src_bytes + dst_bytes))
    if free < need:
        raise SystemExit(f"need {need / 1e9:.1f} GB free under {work}, have {free / 1e9:.1f} GB")
    command = " ".join(["python", "bench/expand_memory.py", *sys.argv[1:]])
    src, out = work / "source", work / "out"
    try:
        t0 = time.perf_counter()
        spawn("make", args, path=src)
        print(f"source {source_shape.describe()} written: {_du(src) / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)
        results = {}
        runs = (("floor", "floor", 1), ("dcp", "dcp", 1), ("stream", "stream", 1), ("stream2", "stream", 2), ("naive", "naive", 1))
        for run, mode, ranks in runs:
            extra = {"path": src, "out": out / "blob" if mode == "floor" else out}
            if mode == "floor":
                out.mkdir()
                extra["bytes"] = dst_bytes
            repeats = []
            for _ in range(args.repeat):
                repeats.append(dict(spawn(mode, args, ranks=ranks, **extra), load=os.getloadavg()[0]))
                shutil.rmtree(out)
                if mode == "floor" and len(repeats) < args.repeat:
                    out.mkdir()
            results[run] = dict(min(repeats, key=lambda r: r["seconds"]), peak_rss=max(r["peak_rss"] for r in repeats))
            print(f"{run}: {results[run]['seconds']:.1f} s, peak RSS {results[run]['peak_rss'] / 2**20:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    layer = _layer_bytes(source_shape) + _layer_bytes(target_shape)
    report = render(args, command, source_shape, target_shape, layer, results)
    print(report)
    if not args.no_doc:
        append_section(report)


def render(args, command, source, target, layer, results) -> str:
    mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
    floor, stream = results["floor"]["seconds"], results["stream"]["seconds"]
    rows = []
    labels = (
        ("stream", "grow expand (streaming, 1 process)"),
        ("stream2", "grow expand (streaming, 2 ranks; RSS per rank)"),
        ("naive", "naive: load all, expand, save"),
        ("floor", "I/O floor: read source + write target"),
        ("dcp", "DCP floor: the engine's reads and writes, no growth math"),
    )
    for mode, label in labels:
        r = results[mode]
        rows.append(
            f"| {label} | {r['seconds']:.1f} s | {r['seconds'] / floor:.2f}x | {r['cpu_seconds']:.1f} s | {r['load']:.1f} | "
            f"{mib(r['peak_rss'])} | {mib(r['peak_rss'] - r['baseline_rss'])} | {r['bytes_read'] / 1e9:.2f} GB | "
            f"{r['bytes_written'] / 1e9:.2f} GB |"
        )
    rss_goal, time_goal = 3 * layer, 1.5 * floor
    peak = results["stream"]["peak_rss"]
    load = os.getloadavg()
    return "\n".join([
        f"## grow expand: {args.source} -> {args.target} memory and time ({datetime.date.today().isoformat()})",
        "",
        f"- machine: {_machine()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared machine)",
        f"- command: `{command}`",
        f"- source: random bf16 {source.describe()}, torch_dist, one chunk per layer and tensor; target {target.describe()}; "
        f"--width {args.width} --depth {args.depth}; every measurement in a fresh process ({args.repeat} run(s) each: fastest "
        "wall, largest peak RSS; load avg = 1-minute load when the run ended), peak RSS from getrusage (includes the "
        "interpreter and torch); the source files are in the page cache for every run",
        f"- one layer's tensors, source + target: {mib(layer)}; goal peak RSS <= 3x = {mib(rss_goal)}; goal wall <= 1.5x floor = {time_goal:.1f} s",
        "",
        "| run | wall | vs floor | CPU time | load avg | peak RSS | RSS above baseline | read | written |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- memory goal: {'met' if peak <= rss_goal else 'NOT met'} ({peak / layer:.2f}x one layer; naive {results['naive']['peak_rss'] / layer:.1f}x)",
        f"- time goal: {'met' if stream <= time_goal else 'NOT met'} ({stream / floor:.2f}x the I/O floor; "
        f"{stream / results['dcp']['seconds']:.2f}x the DCP floor, i.e. what writing torch_dist costs without any math)",
        "",
    ])


if __name__ == "__main__":
    main()
