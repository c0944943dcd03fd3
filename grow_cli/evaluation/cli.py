"""`grow eval`: perplexity, zero-shot tasks and layer-wise convergence diagnostics of checkpoints.

No torch or megatron at module scope: the command imports them when it runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from grow_cli.errors import GrowError
from grow_cli.evaluation.cache import CACHE_ENV, DEFAULT_CACHE

EPILOG = (
    "Examples:\n\n"
    "  grow eval ckpt/2B --data data/shakespeare --json\n\n"
    "  grow eval ckpt/1B ckpt/2B-growth ckpt/2B-scratch --data data/fw --tasks all --task-data tasks/ "
    "--markdown results.md --plots figs/\n\n"
    "  grow eval --plan plan.yaml --runs 'runs/grow/{stage}' --runs 'runs/scratch/{stage}' --data data/fw --plots figs/\n\n"
    "  torchrun --nproc-per-node 8 -m grow_cli eval ckpt/8B --tp 8 --tasks all --task-data tasks/\n\n"
    "Task data formats: docs/evaluation.md."
)


def eval_command(
    checkpoints: Annotated[list[Path] | None, typer.Argument(help="torch_dist checkpoint directories, or `grow pretrain` run directories (their newest checkpoint); several make a series.", show_default=False)] = None,
    plan: Annotated[Path | None, typer.Option(help="Plan file (grow plan --out): evaluate the newest checkpoint of each stage's run, see --runs.")] = None,
    runs: Annotated[list[str] | None, typer.Option(help="With --plan: run directory pattern with {stage} (e.g. 2B) or {index}; repeat for growth and scratch runs.")] = None,
    data: Annotated[str | None, typer.Option(help="Prepared data prefix (grow data prepare): its _valid split is evaluated.")] = None,
    text: Annotated[list[str] | None, typer.Option(help="Text file(s) to evaluate instead of --data, one document each (repeatable).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer for --text and tasks (default: the checkpoints' own; with --data the data's, which must match).")] = None,
    tokenizer_file: Annotated[str | None, typer.Option(help="GPT-2 BPE ranks file (gpt2.tiktoken) for offline use.")] = None,
    vocab: Annotated[int | None, typer.Option("--vocab", help="Tokenizer size (before padding) of Megatron-LM checkpoints whose args do not tell it (e.g. HuggingFaceTokenizer); needed without --data, which otherwise gives it.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Evaluate at most this many predicted tokens of the validation text.")] = None,
    tasks: Annotated[str | None, typer.Option(help="Zero-shot lm-eval tasks, comma separated, or `all`: wikitext, lambada_openai, arc_easy, arc_challenge, winogrande, piqa, openbookqa, hellaswag.")] = None,
    task_data: Annotated[Path | None, typer.Option(help="Directory with one local file per task: <task>.jsonl/.json/.parquet (the hub is never used).")] = None,
    limit: Annotated[int | None, typer.Option(help="Score at most this many rows per task.")] = None,
    bootstrap_iters: Annotated[int, typer.Option(help="lm-eval bootstrap iterations for the stderr of perplexity-type metrics (0: no stderr at all).")] = 100000,
    layers: Annotated[bool, typer.Option("--layers/--no-layers", help="Layer diagnostics: movement, C_model, logit lens, block influence, angular distance, PCA.")] = True,
    diag_tokens: Annotated[int, typer.Option(help="Tokens of the validation text the layer diagnostics use.")] = 16384,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    tp: Annotated[int, typer.Option(help="Tensor-parallel size (launch as many processes with torchrun).")] = 1,
    dtype: Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bf16 or fp32.")] = "auto",
    lens_token_chunk: Annotated[int, typer.Option(help="Logit-lens tile: tokens per tile.")] = 512,
    lens_vocab_chunk: Annotated[int, typer.Option(help="Logit-lens tile: vocabulary entries per tile.")] = 8192,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout (one checkpoint: its record; several: {\"models\": [...]}).")] = False,
    markdown: Annotated[Path | None, typer.Option(help="Write the tables as markdown to this file.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Write PNG figures into this directory.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --markdown file or --plots directory.")] = False,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help=f"Reuse the results of a checkpoint whose files, text, tasks and settings are unchanged since it was last evaluated (kept in ${CACHE_ENV}, default {DEFAULT_CACHE}).")] = True,
) -> None:
    """Evaluate checkpoints: perplexity, zero-shot tasks (lm-eval) and layer diagnostics, as a series table.

    Validation perplexity and bits per byte; zero-shot accuracy through lm-evaluation-harness on
    local task data; layer diagnostics on the pre-norm residual stream (movement d_l, C_model,
    logit lens, block influence, angular distance, PCA).
    """
    _quiet_environment()
    from grow_cli.checkpoint.atomic import check_output
    from grow_cli.evaluation.command import EvalRequest, run_eval
    from grow_cli.evaluation.runner import RunSettings

    for value, flag in ((diag_tokens, "--diag-tokens"), (lens_token_chunk, "--lens-token-chunk"), (lens_vocab_chunk, "--lens-vocab-chunk")):
        if value < 1:
            raise GrowError(f"{flag} must be at least 1, got {value}")
    if limit is not None and limit < 1:
        raise GrowError(f"--limit must be at least 1, got {limit}")
    if markdown is not None:
        check_output(markdown, force, "markdown file")
    if plots is not None:
        check_output(plots, force, "plots directory")
    from grow_cli.checkpoint.rundir import resolve_checkpoint
    from grow_cli.evaluation.series import checkpoints_from_runs

    paths = [resolve_checkpoint(path) for path in checkpoints or ()]
    if plan is not None:
        paths += checkpoints_from_runs(str(plan), list(runs or ()))
    elif runs:
        raise GrowError("--runs needs --plan PLAN (the stages to look for)")
    request = EvalRequest(
        checkpoints=tuple(dict.fromkeys(paths)),
        data=data,
        text=tuple(text or ()),
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
        vocab=vocab,
        max_tokens=max_tokens,
        tasks=tuple(t for t in (tasks or "").split(",") if t.strip()),
        task_data=task_data,
        tp=tp,
        dtype=dtype,
        cache=cache,
        settings=RunSettings(
            batch_size=batch_size,
            diagnostics=layers,
            diag_tokens=diag_tokens,
            token_chunk=lens_token_chunk,
            vocab_chunk=lens_vocab_chunk,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
        ),
    )
    from grow_cli.console import stderr_console

    stderr = stderr_console()
    progress_bar, factory = _progress(stderr)
    with progress_bar:
        reports = run_eval(request, factory)
    if reports is None:  # not rank 0
        return
    _emit(reports, as_json, markdown, plots, force)


def _quiet_environment() -> None:
    """Task data is local: never wait on the hub. Progress is ours (rich): switch off the tqdm bars
    of lm-eval and datasets. Runs before torch/datasets/lm_eval are imported (tqdm reads
    TQDM_DISABLE at import)."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")


def _progress(console):
    """A rich progress display on stderr and the factory the evaluation uses to add bars."""
    from grow_cli.console import progress_bar
    from grow_cli.runtime.env import is_main

    bar = progress_bar("{task.description}", remaining=True, console=console, disable=not is_main())

    def factory(label: str, total: int):
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    return bar, factory


def _emit(reports, as_json: bool, markdown: Path | None, plots: Path | None, force: bool) -> None:
    from grow_cli.console import stdout_console

    from grow_cli.evaluation.report import tables, to_json, to_markdown, to_rich

    rendered = tables(reports)
    if as_json:
        typer.echo(json.dumps(to_json(reports), indent=2))
    else:
        console = stdout_console()
        for table in rendered:
            console.print(to_rich(table))
    if markdown is not None:
        from grow_cli.checkpoint.atomic import write_text_atomic

        write_text_atomic(markdown, "\n".join(to_markdown(t) for t in rendered))
    if plots is not None:
        from grow_cli.checkpoint.atomic import atomic_directory
        from grow_cli.evaluation.plots import write_plots

        with atomic_directory(plots, force=force, what="plots directory") as directory:
            write_plots(reports, _loss_curves(reports), directory)


def _loss_curves(reports):
    """Validation loss against cumulative training FLOPs of every run whose metrics are on disk."""
    from grow_cli.evaluation.plots import LossCurve
    from grow_cli.evaluation.series import valid_curve

    curves = []
    for report in reports:
        if report.cost is not None:
            flops, loss = valid_curve(Path(report.checkpoint), report.cost)
            if flops:
                curves.append(LossCurve(name=report.name, method=report.method, flops=flops, loss=loss))
    return curves
