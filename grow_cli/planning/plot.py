"""A one-figure picture of a plan: where the compute goes and how many tokens each stage eats.

Left: cumulative FLOPs after each stage, growing the series vs training every size from
scratch (the gap is the saving). Right: each stage's scratch token budget next to the tokens it
trains on when grown, with re-read tokens hatched under `--fixed-data`.
"""

from __future__ import annotations

from pathlib import Path

from grow_cli.planning.planfile import Plan
from grow_cli.planning.report import flop_unit


def save_plot(plan: Plan, path: Path) -> None:
    """Write the figure to `path` (format from its suffix) under a temporary name, then rename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in plan.stages]
    x = list(range(len(names)))
    prefix, scale = flop_unit(plan.totals.flops_independent)
    independent, running = [], 0.0
    for s in plan.stages:
        running += s.flops_scratch
        independent.append(running / scale)
    progressive = [s.flops_cumulative / scale for s in plan.stages]

    fig, (ax_flops, ax_tokens) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    ax_flops.bar([i - width / 2 for i in x], independent, width, label="every size from scratch", color="#bbbbbb")
    ax_flops.bar([i + width / 2 for i in x], progressive, width, label="grown series", color="#2b7bba")
    ax_flops.set_xticks(x, names)
    ax_flops.set_ylabel(f"cumulative {prefix}FLOPs ({plan.flops_convention})")
    ax_flops.set_title(f"Compute: {plan.totals.saving_fraction:.1%} saved")
    ax_flops.legend(frameon=False)

    tscale = 1e9 if plan.stages[-1].tokens_scratch >= 1e9 else 1e6
    tunit = "B" if tscale == 1e9 else "M"
    scratch = [s.tokens_scratch / tscale for s in plan.stages]
    repeated = [(s.repeated_tokens or 0.0) / tscale for s in plan.stages]
    fresh = [s.tokens_incremental / tscale - r for s, r in zip(plan.stages, repeated)]
    ax_tokens.bar([i - width / 2 for i in x], scratch, width, label="scratch budget", color="#bbbbbb")
    ax_tokens.bar([i + width / 2 for i in x], fresh, width, label="trained when grown", color="#2b7bba")
    if any(repeated):
        ax_tokens.bar(
            [i + width / 2 for i in x], repeated, width, bottom=fresh, label="re-read (fixed data)",
            color="#2b7bba", alpha=0.45, hatch="//",
        )
    ax_tokens.set_xticks(x, names)
    ax_tokens.set_ylabel(f"tokens ({tunit})")
    ax_tokens.set_title(
        f"Tokens: {plan.totals.tokens_progressive / tscale:.3g}{tunit} grown vs "
        f"{plan.totals.tokens_largest_scratch / tscale:.3g}{tunit} for {names[-1]} alone"
    )
    ax_tokens.legend(frameon=False)
    fig.tight_layout()

    from grow_cli.checkpoint.atomic import atomic_file

    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    finally:
        plt.close(fig)
