"""The series' figures: validation loss against cumulative FLOPs (growth as one curve through all
stages, expansions marked, each scratch baseline beside it), compute per stage, planned vs spent,
and the lineage (which checkpoint grew into which, by which operators, and what each became).

Each point is a `valid` record of a run's metrics.jsonl at the run's own FLOPs plus everything its
ancestors spent (`evaluation/series.py`), so a grown stage continues its parent's curve. Every
curve carries markers: a run validated once is a visible point, not an invisible line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grow_cli.series.report import GROWTH
from grow_cli.series.steps import EXPAND, SCRATCH, TRAINING, Step

LOSS_VS_FLOPS, COMPUTE, LINEAGE = "loss_vs_flops.png", "compute.png", "lineage.png"
PLOT_FILES = (LOSS_VS_FLOPS, COMPUTE, LINEAGE)


def _curve(run: Path) -> tuple[list[float], list[float]]:
    from grow_cli.checkpoint.metadata import read_info
    from grow_cli.evaluation.series import training_cost, valid_curve
    from grow_cli.series.checks import final_checkpoint

    checkpoint = final_checkpoint(run)
    cost = training_cost(checkpoint, read_info(checkpoint)) if checkpoint else None
    return valid_curve(checkpoint, cost) if cost else ([], [])


def write_series_plots(steps: list[Step], rows, directory: Path) -> list[Path]:
    from grow_cli.evaluation.plots import _pyplot, _save, style_loss_vs_flops

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
    style_loss_vs_flops(ax, "cumulative training FLOPs, ancestors included (Megatron-LM convention)", "Validation loss vs compute")
    written.append(_save(fig, directory / LOSS_VS_FLOPS))

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
    written.append(_save(fig, directory / COMPUTE))
    written.append(plot_lineage(rows, expansion_operators(steps), directory / LINEAGE))
    return written


def expansion_operators(steps: list[Step]) -> dict[str, str]:
    """Grown stage -> "width OP + depth OP", read from its expand step's command line (the
    series options rendered once, in `steps.py`)."""
    operators = {}
    for step in (s for s in steps if s.kind == EXPAND):
        argv = list(step.argv)
        operators[step.stage] = f"width {argv[argv.index('--width') + 1]} + depth {argv[argv.index('--depth') + 1]}"
    return operators


@dataclass(frozen=True)
class LineageLayout:
    """Where each member sits on the lineage plot and which arrows join them.

    Growth stages run left to right on the top row in series order; each scratch baseline sits
    below the growth stage of its size (a column of its own when that size was not grown), with
    no arrow into it: it starts from random weights.
    """

    positions: dict[tuple[str, str], tuple[float, float]]  # (name, method) -> (x, y)
    arrows: list[tuple[tuple[str, str], tuple[str, str]]]  # parent -> grown child


def lineage_layout(rows) -> LineageLayout:
    growth = [r for r in rows if r.method == GROWTH]
    positions = {(r.name, r.method): (float(i), 0.0) for i, r in enumerate(growth)}
    column = {r.name: float(i) for i, r in enumerate(growth)}
    for r in (r for r in rows if r.method != GROWTH):
        column.setdefault(r.name, float(len(column)))
        positions[(r.name, r.method)] = (column[r.name], -1.0)
    arrows = [((a.name, a.method), (b.name, b.method)) for a, b in zip(growth, growth[1:])]
    return LineageLayout(positions, arrows)


def _node_label(row) -> str:
    from grow_cli.units import format_count

    loss = "-" if row.valid_loss is None else f"{row.valid_loss:.4f}"
    return (f"{row.name} ({row.method})\n{format_count(row.params)} non-emb. params\n"
            f"{format_count(row.tokens)} tokens trained\nvalid loss {loss}")


def plot_lineage(rows, operators: dict[str, str], path: Path) -> Path:
    """One box per member (`Member` rows), growth solid, scratch dashed and grey, an arrow per
    expansion labelled with its operators (`operators`: grown stage -> text)."""
    from grow_cli.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    layout = lineage_layout(rows)
    columns = 1 + max(x for x, _ in layout.positions.values())
    has_scratch = any(y < 0 for _, y in layout.positions.values())
    fig, ax = plt.subplots(figsize=(max(4.0, 3.2 * columns), 4.8 if has_scratch else 2.6))
    boxes = {}
    for row in rows:
        key = (row.name, row.method)
        x, y = layout.positions[key]
        growth = y == 0
        boxes[key] = ax.text(
            x, y, _node_label(row), ha="center", va="center", fontsize=8,
            bbox={"boxstyle": "round,pad=0.5", "facecolor": "#dbe9f6" if growth else "#eeeeee",
                  "edgecolor": "C0" if growth else "grey", "linestyle": "-" if growth else "--"},
        )
    for parent, child in layout.arrows:
        ax.annotate("", xy=layout.positions[child], xytext=layout.positions[parent],
                    arrowprops={"arrowstyle": "-|>", "color": "C0", "patchA": boxes[parent], "patchB": boxes[child],
                                "shrinkA": 4, "shrinkB": 4})
        (x0, _), (x1, _) = layout.positions[parent], layout.positions[child]
        ax.text((x0 + x1) / 2, 0.32, f"expand\n({operators[child[0]]})", ha="center", va="bottom", fontsize=7, color="C0")
    ax.set_xlim(-0.6, columns - 0.4)
    ax.set_ylim(-1.6 if has_scratch else -0.6, 0.8)
    ax.axis("off")
    ax.set_title("Lineage: growth stages (top, expansions as arrows), scratch baselines (below, dashed)", fontsize=9)
    return _save(fig, path)
