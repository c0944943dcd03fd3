"""DIR/report/: the growth-vs-scratch table of a finished series, as markdown, JSON and plots.

One row per member and method, in the shape of the spec's results table: parameters (non-embedding,
counted on the unpadded vocabulary, the definition `grow eval` and `grow expand` use), tokens
trained by the member's own run and including its ancestors, training FLOPs likewise (Megatron-LM
convention, output layer included, as metrics.jsonl counts them), device-hours spent (GPU-hours on
CUDA, CPU-hours on CPU: training wall time x processes), validation loss and perplexity from the
final evaluation, and task accuracies when asked. The first stage is the series' root and also the
smallest from-scratch model, so it is listed once, as growth.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from grow_cli.checkpoint.rundir import SUMMARY_FILE
from grow_cli.planning.planfile import Plan
from grow_cli.series.state import SeriesState
from grow_cli.series.steps import SCRATCH, TRAINING, SeriesLayout, Step
from grow_cli.shape import PARAMS_DEFINITION

GROWTH = "growth"
SERIES_MD, SERIES_JSON = "series.md", "series.json"


def report_files() -> tuple[str, ...]:
    """Every file of DIR/report/, the markdown first (what the summary and the CLI list)."""
    from grow_cli.series.plots import PLOT_FILES

    return (SERIES_MD, SERIES_JSON, *PLOT_FILES)


@dataclass(frozen=True)
class Member:
    name: str
    method: str  # growth | scratch
    checkpoint: str
    params: int  # non-embedding, PARAMS_DEFINITION
    params_total: int
    tokens: int  # this member's own run
    tokens_total: int  # with its ancestors' runs
    tokens_planned: float
    flops: float
    flops_total: float
    device_hours: float
    device_hours_total: float
    device: str
    valid_loss: float | None
    valid_ppl: float | None
    tasks: dict[str, float] = field(default_factory=dict)


def _accuracy(task: dict) -> float | None:
    for metric in ("acc_norm", "acc", "exact_match"):
        if task.get(metric) is not None:
            return float(task[metric])
    return None


def members(steps: list[Step], plan: Plan, evaluation: dict) -> list[Member]:
    """The report's rows: every training step's final checkpoint, as evaluated."""
    from grow_cli.series.checks import final_checkpoint

    by_checkpoint = {model["checkpoint"]: model for model in evaluation.get("models", [evaluation])}
    rows: list[Member] = []
    before = {"tokens": 0, "hours": 0.0}
    for step in (s for s in steps if s.kind in TRAINING):
        model = by_checkpoint[str(final_checkpoint(step.output))]
        summary = json.loads((step.output / SUMMARY_FILE).read_text())
        hours = summary["train_seconds"] * summary["world_size"] / 3600
        growth = step.kind != SCRATCH
        tokens = int(summary["tokens"])
        stage = plan.stage(step.stage)
        rows.append(Member(
            name=step.stage, method=GROWTH if growth else "scratch", checkpoint=model["checkpoint"],
            params=model["params_nonembedding"], params_total=model["params_total"],
            tokens=tokens, tokens_total=tokens + (before["tokens"] if growth else 0),
            tokens_planned=stage.tokens_incremental if growth else stage.tokens_scratch,
            flops=model.get("train_flops_own", summary["flops"]), flops_total=model.get("train_flops", summary["flops"]),
            device_hours=hours, device_hours_total=hours + (before["hours"] if growth else 0.0),
            device=summary["device"], valid_loss=model.get("loss"), valid_ppl=model.get("ppl"),
            tasks={name: acc for name, task in model.get("tasks", {}).items() if (acc := _accuracy(task)) is not None},
        ))
        if growth:
            before = {"tokens": rows[-1].tokens_total, "hours": rows[-1].device_hours_total}
    return rows


def overhead(state: SeriesState, steps: list[Step]) -> dict:
    """Wall time of the steps against the time spent in training steps (the rest is overhead:
    start-ups, expansion, evaluation, checkpoints)."""
    wall = sum(state.step(step.name).seconds or 0.0 for step in steps)
    training = 0.0
    for step in (s for s in steps if s.kind in TRAINING):
        summary = step.output / SUMMARY_FILE
        if summary.is_file():
            training += json.loads(summary.read_text())["train_seconds"]
    return {"wall_s": wall, "train_s": training, "overhead_s": wall - training,
            "overhead_fraction": (wall - training) / wall if wall > 0 else None}


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def to_markdown(rows: list[Member], costs: dict, verdict: str) -> str:
    from grow_cli.units import format_count

    hours = "CPU-hours" if all(r.device.lower().startswith("cpu") for r in rows) else "device-hours"
    tasks = sorted({name for r in rows for name in r.tasks})
    header = ["member", "method", "params (non-emb.)", "tokens", "tokens incl. ancestors", "FLOPs",
              "FLOPs incl. ancestors", hours, f"{hours} incl. ancestors", "valid loss", "valid ppl", *tasks]
    lines = ["# Series report", "", verdict, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.name, r.method, format_count(r.params), format_count(r.tokens), format_count(r.tokens_total),
                 f"{r.flops:.3e}", f"{r.flops_total:.3e}", f"{r.device_hours:.3g}", f"{r.device_hours_total:.3g}",
                 _fmt(r.valid_loss, ".4f"), _fmt(r.valid_ppl, ".2f"), *(_fmt(r.tasks.get(t), ".3f") for t in tasks)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "FLOPs: Megatron-LM convention (output layer included), as each run's metrics.jsonl counts them; "
              f"parameters: non-embedding, {PARAMS_DEFINITION}.",
              "", f"Files: {', '.join(report_files()[1:])}.",
              "", f"Wall time of the steps {costs['wall_s']:.0f} s, of which training steps {costs['train_s']:.0f} s "
              f"(overhead: start-ups, expansion, evaluation, checkpoints: "
              f"{_fmt(None if costs['overhead_fraction'] is None else 100 * costs['overhead_fraction'], '.1f')}%).", ""]
    return "\n".join(lines)


def verdict(rows: list[Member]) -> str:
    """Growth's largest member against the scratch baseline of the same size, at the FLOPs each spent."""
    growth = [r for r in rows if r.method == GROWTH]
    largest = growth[-1]
    scratch = next((r for r in rows if r.method == "scratch" and r.name == largest.name), None)
    if scratch is None or largest.valid_loss is None or scratch.valid_loss is None:
        return f"{largest.name} grown: validation loss {_fmt(largest.valid_loss, '.4f')} (no scratch baseline: --with-scratch)."
    better = "lower" if largest.valid_loss < scratch.valid_loss else "not lower"
    return (f"{largest.name}: growth reached validation loss {largest.valid_loss:.4f} with {largest.flops_total:.3e} FLOPs "
            f"(all stages), scratch {scratch.valid_loss:.4f} with {scratch.flops_total:.3e}: growth is {better} "
            f"(difference {largest.valid_loss - scratch.valid_loss:+.4f}).")


def write_report(steps: list[Step], plan: Plan, layout: SeriesLayout, state: SeriesState) -> dict:
    """Write DIR/report/ (series.md, series.json, plots) atomically; return series.json's content."""
    from grow_cli.checkpoint.atomic import atomic_directory

    rows = members(steps, plan, json.loads(layout.eval_file.read_text()))
    costs = overhead(state, steps)
    summary = verdict(rows)
    record = {"verdict": summary, "members": [asdict(r) for r in rows], "cost": costs,
              "flops_convention": "megatron", "params_definition": f"non-embedding, {PARAMS_DEFINITION}"}
    with atomic_directory(layout.report, force=True, what="report directory") as directory:
        (directory / SERIES_MD).write_text(to_markdown(rows, costs, summary))
        (directory / SERIES_JSON).write_text(json.dumps(record, indent=2))
        from grow_cli.series.plots import write_series_plots

        write_series_plots(steps, rows, directory)
    return record
