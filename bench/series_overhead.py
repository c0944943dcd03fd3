"""Benchmark: the share of a series' wall time not spent in training steps, steps in one process
against every step as its own process (`--isolate`, the baseline).

It re-runs a series the demo made (`make demo` -> ./demo, `make demo-quick` -> ./demo-quick) with
the same plan, data and options (read from the demo's DIR/series.json, so nothing is restated
here) into fresh directories, once each way, and measures:

* `command`: the wall time of the whole `grow series` command (start-up, every step, the report);
* `training`: the time inside training steps, summed over the runs' summary.json (`train_seconds`:
  forward, backward and optimizer steps; validation and checkpoints excluded);
* overhead = command - training, as a share of the command. It holds process start-ups, model
  builds, expansion, in-training validation, checkpoints, the final evaluation and the report.

Both ways must give the same weights: the final checkpoints are compared tensor by tensor.

    python bench/series_overhead.py [DEMO_DIR] [--seed-dir series-seed1] [--no-doc]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchdoc import append_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def series_argv(recorded: Path, out: Path) -> list[str]:
    """`grow series` arguments reproducing the series recorded in `recorded` (its series.json)."""
    from grow_cli.options import argv_of
    from grow_cli.series.options import SeriesOptions

    state = json.loads((recorded / "series.json").read_text())
    options = SeriesOptions(**{**state["identity"]["options"], "out": str(out)})
    plan = recorded.parent / "plan.yaml"
    return ["series", str(plan), *argv_of(options)]


def timed_series(argv: list[str], out: Path, isolate: bool) -> dict:
    from grow_cli.checkpoint.rundir import SUMMARY_FILE

    command = [sys.executable, "-m", "grow_cli", *argv, *(["--isolate"] if isolate else [])]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"grow series failed ({proc.returncode}): {proc.stderr[-2000:]}")
    training = sum(json.loads(path.read_text())["train_seconds"] for path in out.glob(f"*/*/{SUMMARY_FILE}"))
    steps = json.loads((out / "series.json").read_text())["steps"]
    return {"command": wall, "steps": sum(step["seconds"] for step in steps.values()), "training": training,
            "eval": steps["eval"]["seconds"], "runs": sorted(p.parent for p in out.glob(f"*/*/{SUMMARY_FILE}"))}


def same_weights(one: Path, two: Path) -> bool:
    import torch

    from grow_cli.checkpoint.tensors import CheckpointReader
    from grow_cli.series.checks import final_checkpoint

    a, b = CheckpointReader(final_checkpoint(one)), CheckpointReader(final_checkpoint(two))
    keys = [k for k in b.tensor_keys() if k.startswith(("decoder", "embedding", "output"))]
    return bool(keys) and sorted(a.tensor_keys()) == sorted(b.tensor_keys()) and all(torch.equal(a.read(k), b.read(k)) for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", nargs="?", default=str(REPO / "demo-quick"), help="A demo directory (plan.yaml, data/, series-seed*/).")
    parser.add_argument("--seed-dir", default="series-seed1", help="The demo series to reproduce.")
    parser.add_argument("--no-doc", action="store_true", help="Print only; do not append to docs/benchmarks.md.")
    args = parser.parse_args()
    recorded = Path(args.demo).resolve() / args.seed_dir
    if not (recorded / "series.json").is_file():
        raise SystemExit(f"{recorded} holds no series: run `make demo-quick` (or `make demo`) first")

    with tempfile.TemporaryDirectory(prefix="grow-overhead-") as scratch:
        results = {}
        for name, isolate in (("every step its own process (--isolate)", True), ("steps in one process (default)", False)):
            out = Path(scratch) / ("isolate" if isolate else "inprocess")
            results[name] = timed_series(series_argv(recorded, out), out, isolate)
        first, second = results.values()
        identical = all(same_weights(a, b) for a, b in zip(first["runs"], second["runs"]))

    load = os.getloadavg()[0]
    header = (f"## grow series overhead: {recorded.relative_to(recorded.parents[1])} re-run both ways\n\n"
              f"- date: {datetime.date.today()}; device: CPU, {os.cpu_count()} cores, load average {load:.1f}; "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; Python {platform.python_version()}\n"
              f"- command: `python bench/series_overhead.py {args.demo} --seed-dir {args.seed_dir}`\n"
              f"- overhead = the whole `grow series` command's wall time - time in training steps (summary.json "
              f"`train_seconds`): start-ups, model builds, expansions, in-training validation, checkpoints, the final "
              f"eval, the report\n- same final weights both ways: {'yes, every tensor equal' if identical else 'NO'}\n")
    lines = [header, "| steps run | command wall | steps' wall | in training steps | final eval | overhead |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        overhead = r["command"] - r["training"]
        lines.append(f"| {name} | {r['command']:.1f} s | {r['steps']:.1f} s | {r['training']:.1f} s | {r['eval']:.1f} s | "
                     f"{overhead:.1f} s ({100 * overhead / r['command']:.1f}%) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_doc:
        append_section(text)
    if not identical:
        raise SystemExit("the two ways gave different weights")


if __name__ == "__main__":
    main()
