"""Evaluate one checkpoint: the validation pass, the layer diagnostics and the zero-shot tasks.

One forward per validation batch feeds everything: its logits give the perplexity, and (for the
first `diag_tokens` tokens) the captured residual stream feeds the logit lens and the geometry
measures. The zero-shot tasks then run through the lm-eval adapter, and with lambada data the
per-layer last-word readout replays lm-eval's lambada_openai requests at every layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grow_cli.checkpoint.metadata import CheckpointInfo
from grow_cli.data.tokenizer import Tokenizer
from grow_cli.evaluation.diagnostics import PCAView, StreamGeometry, StreamMeter, pca_trajectories
from grow_cli.evaluation.forward import EvalModel
from grow_cli.evaluation.lens import LastWordLayer, LensLayer, LogitLens, last_word_by_layer, lens_to_json
from grow_cli.evaluation.perplexity import PerplexityMeter, PerplexityResult
from grow_cli.evaluation.series import RunCost
from grow_cli.evaluation.tasks import LAMBADA, TaskResult, TaskSpec
from grow_cli.evaluation.text import EvalText, token_byte_lengths
from grow_cli.shape import PARAMS_DEFINITION

# progress(label, total) -> advance(n)
Progress = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class RunSettings:
    """How hard to look: batch size, the diagnostics token budget and the lens tile sizes."""

    batch_size: int = 8
    diagnostics: bool = True
    diag_tokens: int = 16384
    token_chunk: int = 512
    vocab_chunk: int = 8192
    limit: int | None = None  # rows per task
    bootstrap_iters: int = 100000


@dataclass
class ModelReport:
    """Everything measured on one checkpoint (fields left None were not requested)."""

    checkpoint: str
    info: CheckpointInfo
    method: str
    perplexity: PerplexityResult | None = None
    geometry: StreamGeometry | None = None
    lens: list[LensLayer] | None = None
    pca: PCAView | None = None
    lambada_layers: list[LastWordLayer] | None = None
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    cost: RunCost | None = None  # training FLOPs, when the run's metrics.jsonl are on disk
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """The series member: the plan stage when recorded, else the size of its parameters."""
        from grow_cli.units import size_name

        return self.info.stage or size_name(self.info.shape.param_counts().nonembedding)

    def to_json(self) -> dict:
        shape = self.info.shape
        record: dict = {
            "checkpoint": self.checkpoint,
            "name": self.name,
            "method": self.method,
            "stage": self.info.stage,
            "iteration": self.info.iteration,
            "consumed_samples": self.info.consumed_samples,
            "params_nonembedding": shape.param_counts().nonembedding,
            "params_total": shape.param_counts().total,
            "params_definition": PARAMS_DEFINITION,
            "layers": shape.layers,
            "seconds": round(self.seconds, 2),
        }
        if self.cost:
            record.update(train_flops=self.cost.total, train_flops_own=self.cost.own_flops, train_flops_inherited=self.cost.inherited_flops)
        if self.perplexity:
            record.update(self.perplexity.to_json())
        if self.geometry:
            record.update(self.geometry.to_json())
        if self.lens:
            record["lens"] = lens_to_json(self.lens)
        if self.pca:
            record.update(self.pca.to_json())
        if self.lambada_layers:
            record["lambada_by_layer"] = lens_to_json(self.lambada_layers)
        if self.tasks:
            record["tasks"] = {name: result.to_json() for name, result in self.tasks.items()}
        return record


def method_of(info: CheckpointInfo) -> str:
    """`growth` when the lineage holds an expansion, `imported` for a foreign model, else `scratch`."""
    ops = [step.op for step in info.lineage]
    if "expand" in ops:
        return "growth"
    if ops and ops[0] == "import":
        return "imported"
    return "scratch"


def validation_pass(
    model: EvalModel, text: EvalText, settings: RunSettings, progress: Progress | None
) -> tuple[PerplexityResult, StreamGeometry | None, list[LensLayer] | None, PCAView | None]:
    """Perplexity over non-overlapping windows; diagnostics over the first `diag_tokens` tokens
    (rounded up to whole windows)."""
    meter = PerplexityMeter(token_byte_lengths(text.tokenizer))
    stream = StreamMeter(model.num_layers + 1) if settings.diagnostics else None
    lens = LogitLens(model, settings.token_chunk, settings.vocab_chunk) if settings.diagnostics else None
    advance = progress("perplexity" + (" + layer diagnostics" if lens else ""), text.predicted) if progress else None
    diagnosed = 0
    for batch in _batches(text.windows(model.seq_len), settings.batch_size):
        tokens = torch.from_numpy(batch[:, :-1].copy())
        targets = torch.from_numpy(batch[:, 1:].copy())
        capture = lens is not None and diagnosed < settings.diag_tokens
        output = model.forward(tokens, capture_states=capture)
        meter.add(output.logits, targets)
        if capture:  # whole sequences, as many as the remaining diagnostics budget needs
            rows = min(len(batch), -(-(settings.diag_tokens - diagnosed) // targets.size(1)))
            stream.add(output.states[:, :rows])
            lens.add(output.states[:, :rows], targets[:rows])
            diagnosed += targets[:rows].numel()
        if advance:
            advance(targets.numel())
    if lens is None:
        return meter.result(), None, None, None
    samples = stream.trajectory_samples()
    pca = pca_trajectories(samples) if samples is not None else None
    return meter.result(), stream.result(), lens.result(), pca


def _batches(windows, batch_size: int):
    """Stack windows of equal length into [b, s + 1] arrays (only the last window is shorter)."""
    import numpy

    group: list = []
    for window in windows:
        if group and (len(group) == batch_size or len(window) != len(group[0])):
            yield numpy.stack(group)
            group = []
        group.append(window)
    if group:
        yield numpy.stack(group)


def evaluate_checkpoint(
    model: EvalModel,
    tokenizer: Tokenizer,
    text: EvalText | None,
    specs: list[TaskSpec],
    task_configs: list[Path],
    settings: RunSettings,
    progress: Progress | None = None,
) -> ModelReport:
    """All requested measurements of one loaded checkpoint."""
    from grow_cli.evaluation.harness import GrowLM
    from grow_cli.evaluation.series import training_cost
    from grow_cli.evaluation.tasks import run_tasks, task_requests

    started = time.perf_counter()
    report = ModelReport(checkpoint=str(model.path), info=model.info, method=method_of(model.info))
    report.cost = training_cost(model.path, model.info)
    if text is not None:
        report.perplexity, report.geometry, report.lens, report.pca = validation_pass(model, text, settings, progress)
    if specs:
        lm = GrowLM(model, tokenizer, batch_size=settings.batch_size, progress=progress)
        report.tasks = run_tasks(lm, specs, task_configs, settings.limit, settings.bootstrap_iters) or {}
        names = [spec.name for spec in specs]
        if settings.diagnostics and LAMBADA in names:
            config = task_configs[names.index(LAMBADA)]
            pairs = [lm.encode_request(context, target) for context, target in task_requests(config, LAMBADA, settings.limit)]
            report.lambada_layers = last_word_by_layer(model, pairs, settings.batch_size, settings.token_chunk, settings.vocab_chunk)
    report.seconds = time.perf_counter() - started
    return report
