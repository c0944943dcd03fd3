"""Zero-shot tasks: lm-eval's own task configs, pointed at local data files.

The hub is unreachable from training clusters, and dataset ids moved between lm-eval 0.4
releases, so grow never asks the hub. For each task it writes a small YAML that `include`s the
task's config shipped inside the installed lm_eval package (prompt, choices, metrics, filters all
stay lm-eval's) and overrides only where the rows come from:

    include: <lm_eval>/tasks/arc/arc_easy.yaml
    dataset_path: json            # or parquet
    dataset_kwargs: {data_files: {test: /data/tasks/arc_easy.jsonl}}
    training_split: null          # zero-shot: only the evaluated split is read
    validation_split: null
    test_split: test

`--task-data DIR` holds one file per task, `DIR/<task>.jsonl` (or `.json`, `.parquet`), with the
rows of the split lm-eval evaluates, in the hub dataset's own format (fields below).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from grow_cli.errors import GrowError

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class TaskSpec:
    """A supported lm-eval task: where its config lives in lm_eval, which split it scores, the
    row fields it reads, and the metric the summary table shows."""

    name: str
    config: str  # path under lm_eval/tasks
    split: str  # "test" or "validation"
    fields: tuple[str, ...]
    metrics: tuple[str, ...]  # what lm-eval reports (its config's metric_list)
    headline: str
    label: str  # column title in tables


_MC = ("acc", "acc_norm")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("wikitext", "wikitext/wikitext.yaml", "test", ("page",), ("word_perplexity", "byte_perplexity", "bits_per_byte"), "word_perplexity", "WikiText PPL"),
        TaskSpec("lambada_openai", "lambada/lambada_openai.yaml", "test", ("text",), ("perplexity", "acc"), "acc", "LAMBADA"),
        TaskSpec("arc_easy", "arc/arc_easy.yaml", "test", ("question", "choices", "answerKey"), _MC, "acc_norm", "ARC-e"),
        TaskSpec("arc_challenge", "arc/arc_challenge.yaml", "test", ("question", "choices", "answerKey"), _MC, "acc_norm", "ARC-c"),
        TaskSpec("winogrande", "winogrande/default.yaml", "validation", ("sentence", "option1", "option2", "answer"), ("acc",), "acc", "Winogr."),
        TaskSpec("piqa", "piqa/piqa.yaml", "validation", ("goal", "sol1", "sol2", "label"), _MC, "acc_norm", "PIQA"),
        TaskSpec("openbookqa", "openbookqa/openbookqa.yaml", "test", ("question_stem", "choices", "answerKey"), _MC, "acc_norm", "OBQA"),
        TaskSpec(
            "hellaswag",
            "hellaswag/hellaswag.yaml",
            "validation",
            ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
            _MC,
            "acc_norm",
            "HellaSwag",
        ),
    )
}
DEFAULT_TASKS = tuple(TASKS)
LAMBADA = "lambada_openai"


def parse_tasks(text: str) -> list[TaskSpec]:
    """`--tasks arc_easy,piqa` (or `all`) -> specs, with a one-line error for unknown names."""
    names = list(DEFAULT_TASKS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise GrowError(f"unknown task(s) {', '.join(unknown)}; supported: {', '.join(TASKS)} (or `all`)")
    return [TASKS[n] for n in dict.fromkeys(names)]


def find_task_file(spec: TaskSpec, task_data: Path | None) -> Path:
    """The local rows of `spec`; GrowError naming the expected file when there is none."""
    expected = f"{spec.name}.jsonl (or .json/.parquet) with the {spec.split} rows, fields {', '.join(spec.fields)}"
    if task_data is None:
        raise GrowError(f"task {spec.name} needs local data (the hub is not used): pass --task-data DIR holding {expected}")
    for suffix in FORMATS:
        candidate = task_data / f"{spec.name}{suffix}"
        if candidate.is_file():
            _check_fields(spec, candidate)
            return candidate.resolve()
    raise GrowError(f"no data for task {spec.name} in {task_data}: expected {expected}; see docs/evaluation.md")


def _check_fields(spec: TaskSpec, path: Path) -> None:
    """Read the first row (or the parquet schema) and name any missing field."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
    else:
        first = _first_json_row(path)
        present = set(first)
    missing = [f for f in spec.fields if f not in present]
    if missing:
        raise GrowError(f"{path} lacks field(s) {', '.join(missing)} that lm-eval's {spec.name} reads")


def _first_json_row(path: Path) -> dict:
    """The first row of a JSON-lines file, or of a JSON array / {"data": [...]} document (a
    `.json` file may be either: `datasets`' `to_json` writes JSON lines)."""
    try:
        with path.open(encoding="utf-8") as handle:
            line = next((line for line in handle if line.strip()), None)
            if line is None:
                raise GrowError(f"{path} is empty: it needs at least one row")
            try:
                row = json.loads(line)
                if isinstance(row, list):  # a one-line JSON array
                    row = row[0] if row else None
            except json.JSONDecodeError:
                if path.suffix == ".jsonl":
                    raise
                handle.seek(0)
                data = json.load(handle)
                rows = data if isinstance(data, list) else next((v for v in data.values() if isinstance(v, list)), [])
                if not rows:
                    raise GrowError(f"{path} holds no rows") from None
                row = rows[0]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GrowError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(row, dict):
        raise GrowError(f"{path}: rows must be JSON objects")
    return row


def lm_eval_config(spec: TaskSpec) -> Path:
    """The task's YAML inside the installed lm_eval package."""
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / spec.config
    if not path.is_file():
        raise GrowError(f"the installed lm_eval has no {spec.config}; install lm-eval 0.4.x (pip install 'lm-eval>=0.4.8,<0.5')")
    return path


def write_task_yaml(spec: TaskSpec, data_file: Path, directory: Path) -> Path:
    """Write the override YAML for `spec` reading `data_file`; returns its path (an lm-eval spec)."""
    import yaml

    splits = {"training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None}
    splits[f"{spec.split}_split"] = spec.split
    config = {
        "include": str(lm_eval_config(spec)),
        "task": spec.name,
        "dataset_path": FORMATS[data_file.suffix],
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {spec.split: str(data_file)}},
        **splits,
    }
    path = directory / f"{spec.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class TaskResult:
    """One task's lm-eval metrics: `metrics[m]` and `stderr[m]` (None where lm-eval gives N/A)."""

    name: str
    samples: int
    metrics: dict[str, float]
    stderr: dict[str, float | None]

    @property
    def headline(self) -> float:
        return self.metrics[TASKS[self.name].headline]

    def to_json(self) -> dict:
        record: dict = {"samples": self.samples}
        for metric, value in self.metrics.items():
            record[metric] = value
            record[f"{metric}_stderr"] = self.stderr.get(metric)
        return record


def prepare_task_configs(specs: list[TaskSpec], task_data: Path | None, directory: Path) -> list[Path]:
    """Check every task's local data (all errors before any model runs) and write the YAMLs."""
    files = [find_task_file(spec, task_data) for spec in specs]
    return [write_task_yaml(spec, data_file, directory) for spec, data_file in zip(specs, files)]


def run_tasks(lm, specs: list[TaskSpec], configs: list[Path], limit: int | None, bootstrap_iters: int) -> dict[str, TaskResult] | None:
    """lm_eval.simple_evaluate on the prepared configs, zero-shot; None on ranks lm-eval leaves
    without results (all but local rank 0 under TP)."""
    import contextlib
    import logging
    import sys

    import lm_eval
    from lm_eval.tasks import TaskManager

    # lm-eval narrates its config defaults at WARNING level; only its errors matter to our users
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    manager = TaskManager(include_defaults=False, include_path=str(configs[0].parent))
    with contextlib.redirect_stdout(sys.stderr):  # lm-eval print()s progress notes; stdout may be --json
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[str(path) for path in configs],
            task_manager=manager,
            num_fewshot=0,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            cache_requests=False,
        )
    if output is None:
        return None
    results = {}
    for spec in specs:
        raw = output["results"][spec.name]
        metrics, stderr = {}, {}
        for metric in spec.metrics:
            metrics[metric] = float(raw[f"{metric},none"])
            error = raw.get(f"{metric}_stderr,none")
            stderr[metric] = float(error) if isinstance(error, (int, float)) else None
        samples = output["n-samples"][spec.name]["effective"]
        results[spec.name] = TaskResult(name=spec.name, samples=samples, metrics=metrics, stderr=stderr)
    return results


def task_requests(config: Path, name: str, limit: int | None) -> list[tuple[str, str]]:
    """The (context, continuation) requests lm-eval builds for a loglikelihood task, zero-shot."""
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_defaults=False, include_path=str(config.parent)).load([str(config)])["tasks"][name]
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return [instance.args for instance in task.instances]
