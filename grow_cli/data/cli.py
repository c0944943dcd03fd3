"""`grow data ...`: prepare training data (torch and megatron are imported inside the command)."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

app = typer.Typer(
    name="data",
    help="Prepare training data: tokenize text into megatron-core indexed datasets.",
    no_args_is_help=True,
)


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


@app.command()
def prepare(
    inputs: Annotated[
        list[str],
        typer.Option(
            "--input",
            "-i",
            help=(
                "Repeatable: .jsonl/.json/.parquet/.txt files (or .gz), a directory, a quoted glob, "
                "a hub dataset id (streamed), or `shakespeare` (the shipped corpus)."
            ),
        ),
    ],
    out: Annotated[
        str,
        typer.Option(help="Output path prefix: writes PREFIX_train.{bin,idx}, PREFIX_valid.{bin,idx}, PREFIX.json."),
    ],
    tokenizer: Annotated[str, typer.Option(help="tiktoken encoding: gpt2, cl100k_base or o200k_base.")] = "gpt2",
    tokenizer_file: Annotated[
        str | None,
        typer.Option(help="GPT-2 BPE ranks file (gpt2.tiktoken); default: $GROW_ASSETS, ~/.cache/grow/assets, the checkout's .cache/assets."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Tokenizer processes.")] = _default_workers(),
    valid_fraction: Annotated[float, typer.Option(help="Share of documents held out for validation.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the document-level train/valid split.")] = 1234,
    text_key: Annotated[str, typer.Option(help="JSON field / parquet column / hub column holding the text.")] = "text",
    name: Annotated[str | None, typer.Option(help="Hub dataset configuration, e.g. sample-10BT.")] = None,
    split: Annotated[str, typer.Option(help="Hub dataset split to stream.")] = "train",
    max_documents: Annotated[int | None, typer.Option(help="Stop after this many non-empty documents.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing prepared prefix.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Tokenize documents (EOS after each), split them into train/valid by document, and write
    megatron-core indexed datasets (.bin/.idx) plus a JSON sidecar naming the tokenizer."""
    from grow_cli.data.prepare import PrepareConfig, plan_prepare, prepare as run_prepare

    config = PrepareConfig(
        inputs=tuple(inputs),
        out=out,
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
        workers=workers,
        valid_fraction=valid_fraction,
        text_key=text_key,
        split=split,
        name=name,
        max_documents=max_documents,
        seed=seed,
        force=force,
    )
    plan = plan_prepare(config)

    from grow_cli.console import progress_bar

    progress = progress_bar("tokenizing", "docs  {task.fields[tokens]:,} tokens  {task.fields[rate]:,.0f} tok/s")
    with progress:
        task = progress.add_task("prepare", total=plan.expected_documents, tokens=0, rate=0.0)

        def update(documents: int, tokens: int, seconds: float) -> None:
            progress.update(task, completed=documents, tokens=tokens, rate=tokens / seconds if seconds > 0 else 0.0)

        result = run_prepare(plan, update)

    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    _print_summary(result)


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    info = result.info
    table = Table(title=f"{info.prefix} ({info.tokenizer}, vocab {info.vocab_size}, {info.dtype})")
    table.add_column("split")
    table.add_column("documents", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("files")
    for split, counts in (("train", info.train), ("valid", info.valid)):
        table.add_row(split, f"{counts.documents:,}", f"{counts.tokens:,}", info.split_prefix(split) + ".{bin,idx}")
    total = info.train.tokens + info.valid.tokens
    table.add_row("total", f"{info.train.documents + info.valid.documents:,}", f"{total:,}", f"{info.prefix}.json")
    console = Console()
    console.print(table)
    console.print(
        f"{result.tokens_per_second:,.0f} tokens/s with {result.workers} worker(s) in {result.seconds:.1f} s"
        + (f"; skipped {result.skipped_empty:,} empty documents" if result.skipped_empty else "")
    )
