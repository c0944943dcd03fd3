"""The series table (rows: size x method, like the spec's results table) and the per-layer table,
rendered for the terminal (rich), as markdown and as JSON.

The series table shows one headline number per task: acc_norm where lm-eval defines it (ARC,
OBQA, PIQA, HellaSwag), acc otherwise (LAMBADA, Winogrande), word perplexity for WikiText; the
JSON carries every metric with its stderr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from grow_cli.evaluation.runner import ModelReport
from grow_cli.evaluation.tasks import TASKS
from grow_cli.shape import PARAMS_DEFINITION
from grow_cli.units import format_count

_METHOD_ORDER = {"scratch": 0, "imported": 1, "growth": 2}


@dataclass(frozen=True)
class Table:
    """Column titles and formatted rows (strings), plus a title."""

    title: str
    columns: list[str]
    rows: list[list[str]]


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def ordered(reports: list[ModelReport]) -> list[ModelReport]:
    """Smallest model first, scratch before growth within a size."""
    return sorted(reports, key=lambda r: (r.info.shape.param_counts().nonembedding, _METHOD_ORDER.get(r.method, 9)))


def series_table(reports: list[ModelReport]) -> Table:
    """One row per checkpoint: size, method, parameters, validation metrics, C_model, task headlines."""
    reports = ordered(reports)
    task_names = [name for name in TASKS if any(name in r.tasks for r in reports)]
    has_ppl = any(r.perplexity for r in reports)
    has_geometry = any(r.geometry for r in reports)
    has_cost = any(r.cost for r in reports)
    columns = ["size", "method", "iter", "non-emb. params"] + (["train FLOPs"] if has_cost else [])
    if has_ppl:
        columns += ["Valid loss", "Valid PPL", "bits/byte"]
    if has_geometry:
        columns += ["C_model", "last-layer d"]
    columns += [TASKS[name].label for name in task_names]
    rows = []
    for report in reports:
        row = [report.name, report.method, str(report.info.iteration), format_count(report.info.shape.param_counts().nonembedding)]
        if has_cost:
            row.append(_fmt(report.cost and report.cost.total, 3))
        if has_ppl:
            p = report.perplexity
            row += [_fmt(p and p.loss), _fmt(p and p.ppl), _fmt(p and p.bits_per_byte)]
        if has_geometry:
            g = report.geometry
            row += [_fmt(g and g.convergence, 3), _fmt(g and g.movement[-1], 3)]
        for name in task_names:
            result = report.tasks.get(name)
            spec = TASKS[name]
            if result is None:
                row.append("-")
            elif spec.headline.endswith("perplexity"):
                row.append(_fmt(result.headline))
            else:
                row.append(_pct(result.headline))
        rows.append(row)
    return Table(title=f"grow eval: series (params {PARAMS_DEFINITION})", columns=columns, rows=rows)


def layer_table(report: ModelReport) -> Table | None:
    """Per-layer diagnostics of one model: movement, block influence, lens, per-layer LAMBADA."""
    if report.lens is None or report.geometry is None:
        return None
    columns = ["layer", "movement d", "block infl.", "lens loss", "lens PPL", "lens acc %", "entropy", "KL(final‖l)"]
    lambada = report.lambada_layers
    if lambada:
        columns.append("LAMBADA acc %")
    rows = []
    for index, lens in enumerate(report.lens):
        layer = lens.layer
        if layer < 0:
            row = ["emb", "-", "-"]
        else:
            row = [str(layer), _fmt(report.geometry.movement[layer], 3), _fmt(report.geometry.block_influence[layer], 3)]
        row += [_fmt(lens.loss), _fmt(lens.ppl), _pct(lens.accuracy), _fmt(lens.entropy), _fmt(lens.kl)]
        if lambada:
            row.append(_pct(lambada[index].acc))
        rows.append(row)
    title = f"{report.name} ({report.method}) layers: C_model = {report.geometry.convergence:.3f}"
    return Table(title=title, columns=columns, rows=rows)


def task_table(reports: list[ModelReport]) -> Table | None:
    """Every task metric with its stderr, one row per (model, task)."""
    rows = []
    for report in ordered(reports):
        for name, result in report.tasks.items():
            for metric, value in result.metrics.items():
                error = result.stderr.get(metric)
                rows.append([report.name, report.method, name, metric, _fmt(value), _fmt(error), str(result.samples)])
    if not rows:
        return None
    return Table(title="lm-eval metrics", columns=["size", "method", "task", "metric", "value", "stderr", "n"], rows=rows)


def tables(reports: list[ModelReport]) -> list[Table]:
    """What the terminal and the markdown file show, in order."""
    out = [series_table(reports)]
    out += [t for t in (task_table(reports),) if t]
    out += [t for t in (layer_table(r) for r in ordered(reports)) if t]
    return out


def to_rich(table: Table):
    from rich.table import Table as RichTable

    rich_table = RichTable(title=table.title)
    for index, column in enumerate(table.columns):
        rich_table.add_column(column, justify="left" if index < 2 else "right")
    for row in table.rows:
        rich_table.add_row(*row)
    return rich_table


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |"]
    lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(table.columns))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def to_json(reports: list[ModelReport]) -> dict:
    """One checkpoint: its record; several: {"models": [records, smallest first]}."""
    records = [report.to_json() for report in ordered(reports)]
    return records[0] if len(records) == 1 else {"models": records}
