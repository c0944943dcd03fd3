"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed).

* movement.png   movement d_l per layer, one line per model (spec §2)
* lens.png       per-layer logit-lens perplexity and next-token accuracy (+ per-layer LAMBADA)
* pca_<name>.png last-token trajectories through the layers on their top two principal axes
* loss_vs_flops.png  validation loss against cumulative training FLOPs, one curve per stage,
  growth solid and scratch dashed (the reference method's figure)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grow_cli.evaluation.runner import ModelReport


@dataclass(frozen=True)
class LossCurve:
    """Validation loss of one training run against the cumulative FLOPs of its series."""

    name: str
    method: str
    flops: list[float]
    loss: list[float]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _integer_ticks(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _label(report: ModelReport) -> str:
    return f"{report.name} {report.method}"


def plot_movement(reports: list[ModelReport], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for report in reports:
        moves = report.geometry.movement
        ax.plot(range(len(moves)), moves, marker="o", markersize=3, label=f"{_label(report)} (C={report.geometry.convergence:.2f})")
    _integer_ticks(ax)
    ax.set_xlabel("layer l")
    ax.set_ylabel("movement d_l = (1 - cos(h_{l-1}, h_l)) / 2")
    ax.set_title("Residual-stream movement per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_lens(reports: list[ModelReport], path: Path) -> Path:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for report in reports:
        layers = [row.layer for row in report.lens]
        left.plot(layers, [row.ppl for row in report.lens], marker="o", markersize=3, label=_label(report))
        right.plot(layers, [100 * row.accuracy for row in report.lens], marker="o", markersize=3, label=f"{_label(report)} next token")
        if report.lambada_layers:
            right.plot(
                [row.layer for row in report.lambada_layers],
                [100 * row.acc for row in report.lambada_layers],
                linestyle="--",
                label=f"{_label(report)} LAMBADA",
            )
    _integer_ticks(left, right)
    left.set_yscale("log")
    left.set_xlabel("layer (-1 = embedding)")
    left.set_ylabel("logit-lens perplexity")
    right.set_xlabel("layer (-1 = embedding)")
    right.set_ylabel("accuracy %")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Logit lens: W_U · final_norm(h_l)")
    return _save(fig, path)


def plot_pca(report: ModelReport, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    coords = report.pca.coords
    count = len(coords[0])
    cmap = plt.get_cmap("viridis")
    for sample in coords:
        xs, ys = [p[0] for p in sample], [p[1] for p in sample]
        ax.plot(xs, ys, color="grey", alpha=0.4, linewidth=0.8)
        points = ax.scatter(xs, ys, c=range(count), cmap=cmap, vmin=0, vmax=count - 1, s=14)
    fig.colorbar(points, ax=ax, label="state (0 = embedding, l+1 = after layer l)")
    pc1, pc2 = report.pca.explained
    ax.set_xlabel(f"PC1 ({100 * pc1:.0f}% var)")
    ax.set_ylabel(f"PC2 ({100 * pc2:.0f}% var)")
    ax.set_title(f"{_label(report)}: last-token trajectories")
    return _save(fig, path)


def plot_loss_vs_flops(curves: list[LossCurve], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for curve in curves:
        color = colors.setdefault(curve.name, f"C{len(colors)}")
        style = "-" if curve.method == "growth" else "--"
        # markers: a run validated once is a point, which a bare line would not draw
        ax.plot(curve.flops, curve.loss, linestyle=style, marker="o", markersize=3, color=color, label=f"{curve.name} {curve.method}")
    style_loss_vs_flops(ax, "cumulative training FLOPs, earlier stages included (metrics.jsonl: Megatron-LM convention)",
                        "Validation loss vs compute (solid: growth, dashed: scratch)")
    return _save(fig, path)


def style_loss_vs_flops(ax, xlabel: str, title: str) -> None:
    """The axes every validation-loss-vs-compute figure shares: log FLOPs, grid, legend."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def write_plots(reports: list[ModelReport], curves: list[LossCurve], directory: Path) -> list[Path]:
    """Every figure the data allows, into `directory` (which must exist)."""
    written = []
    diagnosed = [r for r in reports if r.geometry is not None and r.lens is not None]
    if diagnosed:
        written.append(plot_movement(diagnosed, directory / "movement.png"))
        written.append(plot_lens(diagnosed, directory / "lens.png"))
        for report in diagnosed:
            if report.pca is not None:
                safe = f"{report.name}_{report.method}_it{report.info.iteration}".replace("/", "_").replace(" ", "_")
                written.append(plot_pca(report, directory / f"pca_{safe}.png"))
    if curves:
        written.append(plot_loss_vs_flops(curves, directory / "loss_vs_flops.png"))
    return written
