"""The series' figures: validation loss against cumulative FLOPs (growth as one curve through all
stages, expansions marked, each scratch baseline beside it) and compute per stage, planned vs spent.

Each point is a `valid` record of a run's metrics.jsonl at the run's own FLOPs plus everything its
ancestors spent (`evaluation/series.py`), so a grown stage continues its parent's curve. Every
curve carries markers: a run validated once is a visible point, not an invisible line.
"""

from __future__ import annotations

from pathlib import Path

from grow_cli.series.steps import SCRATCH, TRAINING, Step


def _curve(run: Path) -> tuple[list[float], list[float]]:
    from grow_cli.checkpoint.metadata import read_info
    from grow_cli.evaluation.series import training_cost, valid_curve
    from grow_cli.series.checks import final_checkpoint

    checkpoint = final_checkpoint(run)
    cost = training_cost(checkpoint, read_info(checkpoint)) if checkpoint else None
    return valid_curve(checkpoint, cost) if cost else ([], [])


def write_series_plots(steps: list[Step], rows, directory: Path) -> list[Path]:
    from grow_cli.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    growth_x, growth_y, starts = [], [], []
    for step in (s for s in steps if s.kind in TRAINING and s.kind != SCRATCH):
        flops, loss = _curve(step.output)
        if growth_x and flops:
            starts.append((flops[0], loss[0], step.stage))
        growth_x += flops
        growth_y += loss
    ax.plot(growth_x, growth_y, "-o", markersize=3, color="C0", label="growth (all stages)")
    for x, y, name in starts:
        ax.annotate(f"expand -> {name}", (x, y), textcoords="offset points", xytext=(4, 8), fontsize=7)
        ax.axvline(x, color="C0", alpha=0.25, linestyle=":")
    for index, step in enumerate(s for s in steps if s.kind == SCRATCH):
        flops, loss = _curve(step.output)
        ax.plot(flops, loss, "--s", markersize=3, color=f"C{index + 1}", label=f"{step.stage} scratch")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training FLOPs, ancestors included (Megatron-LM convention)")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss vs compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    written.append(_save(fig, directory / "loss_vs_flops.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r.name}\n{r.method}" for r in rows]
    planned = [r.flops * r.tokens_planned / r.tokens if r.tokens else 0.0 for r in rows]
    positions = range(len(rows))
    ax.bar([p - 0.2 for p in positions], planned, 0.4, label="planned (plan tokens at the run's FLOPs/token)")
    ax.bar([p + 0.2 for p in positions], [r.flops for r in rows], 0.4, label="spent")
    ax.set_xticks(list(positions), labels, fontsize=8)
    ax.set_ylabel("training FLOPs of the stage's own run")
    ax.set_title("Compute per stage")
    ax.legend(fontsize=8)
    written.append(_save(fig, directory / "compute.png"))
    return written
