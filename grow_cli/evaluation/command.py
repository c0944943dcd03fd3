"""`grow eval` end to end: check every input, evaluate each checkpoint, write the outputs.

Everything a user can get wrong (checkpoint paths, data, tokenizer/vocab mismatch, task files,
existing outputs) is checked before the first model is built, so a bad invocation fails in
seconds with one line. Under torchrun every rank runs this; rank 0 alone prints and writes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from grow_cli.dtypes import torch_dtype
from grow_cli.errors import GrowError
from grow_cli.evaluation.runner import ModelReport, Progress, RunSettings


@dataclass(frozen=True)
class EvalRequest:
    """What `grow eval` was asked to do, validated (see the command's --help)."""

    checkpoints: tuple[Path, ...]
    data: str | None = None
    text: tuple[str, ...] = ()
    tokenizer: str | None = None  # None: the checkpoints' own
    tokenizer_file: str | None = None
    max_tokens: int | None = None
    tasks: tuple[str, ...] = ()
    task_data: Path | None = None
    tp: int = 1
    dtype: str = "auto"
    settings: RunSettings = field(default_factory=RunSettings)
    cache: bool = True  # reuse the results of an unchanged checkpoint (grow_cli.evaluation.cache)
    vocab: int | None = None  # --vocab: the tokenizer size of Megatron-LM checkpoints whose args do not tell it

    def tokenizer_vocab(self) -> int | None:
        """The vocabulary of Megatron-LM checkpoints whose args do not tell it: --vocab, else the
        size of --data's tokenizer (what the checkpoints are evaluated with)."""
        if self.vocab is not None or not self.data:
            return self.vocab
        from grow_cli.data.info import read_data_info

        return read_data_info(self.data).vocab_size


def check_request(request: EvalRequest) -> None:
    """The flags make sense together (nothing is read yet)."""
    if not request.checkpoints:
        raise GrowError("no checkpoint to evaluate: pass CHECKPOINT paths or --plan PLAN --runs PATTERN")
    if request.data and request.text:
        raise GrowError("pass either --data PREFIX or --text FILES, not both")
    if not (request.data or request.text or request.tasks):
        raise GrowError("nothing to evaluate: pass --data PREFIX or --text FILES (perplexity, layer diagnostics) and/or --tasks")
    if request.max_tokens is not None and request.max_tokens < 1:
        raise GrowError(f"--max-tokens must be at least 1, got {request.max_tokens}")
    if request.vocab is not None and request.vocab < 1:
        raise GrowError(f"--vocab must be at least 1, got {request.vocab}")
    if request.settings.batch_size < 1:
        raise GrowError(f"--batch-size must be at least 1, got {request.settings.batch_size}")
    if request.dtype not in ("auto", "fp32", "bf16"):
        raise GrowError(f"--dtype must be auto, fp32 or bf16, got {request.dtype}")
    if request.task_data is not None and not request.task_data.is_dir():
        raise GrowError(f"--task-data {request.task_data} is not a directory")


def _torch_dtype(name: str):
    from grow_cli.runtime.device import device_policy

    return torch_dtype(device_policy().dtype if name == "auto" else name)


def _load_text(request: EvalRequest, infos: list):
    """(validation text or None, tokenizer): a prepared prefix brings its own tokenizer, which must
    be the checkpoints'; otherwise --tokenizer or the checkpoints' recorded one (all the same)."""
    from grow_cli.checkpoint.rundir import resolve_checkpoint
    from grow_cli.data.tokenizer import load_tokenizer, model_tokenizer
    from grow_cli.data.tokenizer_record import check_same_tokenizer
    from grow_cli.evaluation.text import load_prepared_valid, load_text_files

    if request.data:
        text = load_prepared_valid(request.data, request.max_tokens, request.tokenizer_file)
        for path, info in zip(request.checkpoints, infos):
            check_same_tokenizer(text.tokenizer.record, info.tokenizer, f"data {request.data}", f"checkpoint {path}")
        return text, text.tokenizer
    if request.tokenizer is not None:
        tokenizer = load_tokenizer(request.tokenizer, request.tokenizer_file)
    else:
        first = infos[0].tokenizer
        for path, info in zip(request.checkpoints[1:], infos[1:]):
            if first is not None and info.tokenizer is not None and first.identity != info.tokenizer.identity:
                raise GrowError(
                    f"checkpoints {request.checkpoints[0]} and {path} were trained with different tokenizers "
                    f"({first.describe()} vs {info.tokenizer.describe()}): evaluate them separately"
                )
        tokenizer = model_tokenizer(resolve_checkpoint(request.checkpoints[0]), first, request.tokenizer_file)
    text = load_text_files(list(request.text), tokenizer, request.max_tokens) if request.text else None
    return text, tokenizer


def run_eval(request: EvalRequest, progress: Progress | None = None) -> list[ModelReport] | None:
    """Evaluate every checkpoint; returns the reports on rank 0 (None on other ranks).

    The checkpoints are checked first: a mistyped path is the mistake to name, not the missing
    --data that the flags would report otherwise."""
    from grow_cli.checkpoint.metadata import read_info
    from grow_cli.checkpoint.tensors import validate_checkpoint
    from grow_cli.evaluation.tasks import parse_tasks, prepare_task_configs
    from grow_cli.evaluation.text import check_vocab

    request = replace(request, checkpoints=tuple(validate_checkpoint(path) for path in request.checkpoints))
    check_request(request)
    vocab = request.tokenizer_vocab()
    infos = [read_info(path, tokenizer_vocab=vocab) for path in request.checkpoints]
    text, tokenizer = _load_text(request, infos)
    for path, info in zip(request.checkpoints, infos):
        if text is not None:
            check_vocab(text, info.shape.vocab, str(path))
        elif tokenizer.vocab_size != info.shape.vocab:
            raise GrowError(
                f"tokenizer {tokenizer.name} has vocab {tokenizer.vocab_size} but checkpoint {path} has vocab "
                f"{info.shape.vocab}: pass the model's --tokenizer"
            )
        info.shape.check_layout(request.tp, 1, name=str(path))
    specs = parse_tasks(",".join(request.tasks)) if request.tasks else []
    with tempfile.TemporaryDirectory(prefix="grow-eval-tasks-") as scratch:
        configs = prepare_task_configs(specs, request.task_data, Path(scratch)) if specs else []
        cache = _cache(request, text, tokenizer, specs)
        return _evaluate_all(request, infos, vocab, text, tokenizer, specs, configs, cache, progress)


def _cache(request: EvalRequest, text, tokenizer, specs):
    from grow_cli.evaluation.cache import EvalCache, cache_directory, inputs_identity
    from grow_cli.evaluation.tasks import find_task_file

    if not request.cache:
        return EvalCache(None, {})
    task_files = [(spec.name, find_task_file(spec, request.task_data)) for spec in specs]
    dtype = str(_torch_dtype(request.dtype))
    return EvalCache(cache_directory(), inputs_identity(text, tokenizer, task_files, request.settings, request.tp, dtype))


def _evaluate_all(request, infos, vocab, text, tokenizer, specs, configs, cache, progress) -> list[ModelReport] | None:
    import torch

    from grow_cli.console import stderr_console
    from grow_cli.evaluation.cache import Measurements
    from grow_cli.evaluation.forward import load_eval_model
    from grow_cli.evaluation.runner import evaluate_checkpoint
    from grow_cli.runtime.distributed import init_distributed, shutdown

    runtime = init_distributed(tp=request.tp)
    if runtime.world_size != request.tp:
        shutdown()
        raise GrowError(
            f"grow eval runs one model replica: launch {request.tp} process(es) for --tp {request.tp}, "
            f"not {runtime.world_size}"
        )
    dtype = _torch_dtype(request.dtype)
    reports = []
    notes = stderr_console()
    # every rank looks up every checkpoint before any is evaluated, so all agree on what to skip
    stored = [cache.load(path) for path in request.checkpoints]
    try:
        for path, info, hit in zip(request.checkpoints, infos, stored):
            if hit is not None:
                measurements, file = hit
                if runtime.is_main:
                    notes.print(f"{path}: unchanged since it was evaluated like this, results from {file} (--no-cache recomputes)", highlight=False, soft_wrap=True)
                reports.append(measurements.report(path, info))
                continue
            model = load_eval_model(path, runtime, dtype, tokenizer_vocab=vocab)
            report = evaluate_checkpoint(
                model, tokenizer, text, specs, configs, request.settings,
                progress if runtime.is_main else None,
            )
            reports.append(report)
            if runtime.is_main and (warning := cache.store(path, Measurements.of(report))):
                notes.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
            del model
            if runtime.policy.cuda:
                torch.cuda.empty_cache()
    finally:
        shutdown()
    return reports if runtime.is_main else None
