"""Results of `grow eval` kept between runs: an unchanged checkpoint evaluated the same way is
not evaluated again.

Re-running a pipeline (`make demo`, a series report after one more stage) used to spend ten
minutes recomputing numbers that could not have changed. A checkpoint's measurements are stored
under a key that covers everything they depend on: the checkpoint's files (path, size and
modification time of each: a checkpoint is renamed into place complete and only `--force`
replaces it), the validation tokens themselves, the tokenizer, the task files' contents, the
settings, TP, dtype and the grow version. Anything else that changed misses the cache.

Only the measurements are stored; what describes the checkpoint (its record, the training cost
from the run's metrics) is read fresh. The files are JSON under $GROW_EVAL_CACHE (default
~/.cache/grow/eval), written atomically by rank 0; `grow eval --no-cache` neither reads nor
writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grow_cli import __version__
from grow_cli.checkpoint.atomic import write_json_atomic

if TYPE_CHECKING:  # the measurement types import torch; the CLI reads this module's constants
    from grow_cli.evaluation.diagnostics import PCAView, StreamGeometry
    from grow_cli.evaluation.lens import LastWordLayer, LensLayer
    from grow_cli.evaluation.perplexity import PerplexityResult
    from grow_cli.evaluation.runner import ModelReport
    from grow_cli.evaluation.tasks import TaskResult

CACHE_ENV = "GROW_EVAL_CACHE"
DEFAULT_CACHE = Path("~/.cache/grow/eval")
FORMAT = 1  # bump when the stored measurements change meaning


def cache_directory() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


@dataclass(frozen=True)
class Measurements:
    """What `evaluate_checkpoint` measured on one checkpoint (the fields of a ModelReport that
    depend on the model's weights)."""

    perplexity: PerplexityResult | None
    geometry: StreamGeometry | None
    lens: list[LensLayer] | None
    pca: PCAView | None
    lambada_layers: list[LastWordLayer] | None
    tasks: dict[str, TaskResult]
    seconds: float

    @classmethod
    def of(cls, report: ModelReport) -> "Measurements":
        return cls(report.perplexity, report.geometry, report.lens, report.pca, report.lambada_layers, report.tasks, report.seconds)

    @classmethod
    def from_json(cls, data: dict) -> "Measurements":
        from grow_cli.evaluation.diagnostics import PCAView, StreamGeometry
        from grow_cli.evaluation.lens import LastWordLayer, LensLayer
        from grow_cli.evaluation.perplexity import PerplexityResult
        from grow_cli.evaluation.tasks import TaskResult

        def rows(kind, values):
            return None if values is None else [kind(**value) for value in values]

        return cls(
            perplexity=None if data["perplexity"] is None else PerplexityResult(**data["perplexity"]),
            geometry=None if data["geometry"] is None else StreamGeometry(**data["geometry"]),
            lens=rows(LensLayer, data["lens"]),
            pca=None if data["pca"] is None else PCAView(**data["pca"]),
            lambada_layers=rows(LastWordLayer, data["lambada_layers"]),
            tasks={name: TaskResult(**value) for name, value in data["tasks"].items()},
            seconds=data["seconds"],
        )


    def report(self, checkpoint: Path, info) -> ModelReport:
        """The report `evaluate_checkpoint` gave, with the checkpoint's record and training
        cost read now."""
        from grow_cli.evaluation.runner import ModelReport, method_of
        from grow_cli.evaluation.series import training_cost

        return ModelReport(
            checkpoint=str(checkpoint),
            info=info,
            method=method_of(info),
            perplexity=self.perplexity,
            geometry=self.geometry,
            lens=self.lens,
            pca=self.pca,
            lambada_layers=self.lambada_layers,
            tasks=self.tasks,
            cost=training_cost(checkpoint, info),
            seconds=self.seconds,
        )


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_identity(path: Path) -> list:
    """The checkpoint's absolute path and (name, size, mtime) of every file in it."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return [str(path), *([str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files)]


def inputs_identity(text, tokenizer, task_files: list[tuple[str, Path]], settings, tp: int, dtype: str) -> dict:
    """Everything but the checkpoint that the measurements depend on (computed once per run)."""
    import numpy

    return {
        "format": FORMAT,
        "grow": __version__,
        "text": None if text is None else hashlib.sha256(numpy.ascontiguousarray(text.tokens).tobytes()).hexdigest(),
        "tokenizer": repr(tokenizer.record.identity),
        "tasks": [[name, _file_digest(path)] for name, path in task_files],
        "settings": asdict(settings),
        "tp": tp,
        "dtype": dtype,
    }


class EvalCache:
    """Stored measurements by key; `directory` None switches the cache off."""

    def __init__(self, directory: Path | None, inputs: dict):
        self.directory = directory
        self.inputs = inputs

    def _file(self, checkpoint: Path) -> Path:
        key = json.dumps({"checkpoint": checkpoint_identity(checkpoint), **self.inputs}, sort_keys=True)
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def load(self, checkpoint: Path) -> tuple[Measurements, Path] | None:
        """The stored measurements of `checkpoint` and the file they came from, or None."""
        if self.directory is None:
            return None
        path = self._file(checkpoint)
        try:
            return Measurements.from_json(json.loads(path.read_text())["measurements"]), path
        except (OSError, ValueError, KeyError, TypeError):  # absent, or unreadable: evaluate again
            return None

    def store(self, checkpoint: Path, measurements: Measurements) -> str | None:
        """Keep `measurements` (rank 0); a warning to show when the directory is not writable."""
        if self.directory is None:
            return None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self._file(checkpoint), {"checkpoint": str(checkpoint), "measurements": asdict(measurements)})
        except OSError as error:
            return f"could not keep the results of {checkpoint} in {self.directory} ({error.strerror}); set {CACHE_ENV} or pass --no-cache"
        return None
