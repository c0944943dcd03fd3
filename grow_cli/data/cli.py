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
    tokenizer: Annotated[
        str,
        typer.Option(
            help=(
                "tiktoken encoding (gpt2, cl100k_base, o200k_base), a Hugging Face tokenizer.json or a "
                "directory holding one, or a tiktoken rank file (Llama 3's tokenizer.model)."
            )
        ),
    ] = "gpt2",
    tokenizer_file: Annotated[
        str | None,
        typer.Option(help="GPT-2 BPE ranks file (gpt2.tiktoken); default: $GROW_ASSETS, ~/.cache/grow/assets, the checkout's .cache/assets."),
    ] = None,
    eos: Annotated[
        str | None, typer.Option(help="Document separator token; default: the tokenizer's end-of-text token.")
    ] = None,
    split_pattern: Annotated[
        str | None, typer.Option(help="Rank files: the pre-tokenizer regex (default: Llama 3's).")
    ] = None,
    special_tokens: Annotated[
        str | None,
        typer.Option(help="Rank files: comma-separated special tokens, ids after the ranks (default: Llama 3's 256)."),
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
    from grow_cli.data.prepare import PrepareConfig, prepare as run_prepare, prepare_job

    config = PrepareConfig(
        inputs=tuple(inputs),
        out=out,
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
        eos=eos,
        split_pattern=split_pattern,
        special_tokens=tuple(special_tokens.split(",")) if special_tokens is not None else None,
        workers=workers,
        valid_fraction=valid_fraction,
        text_key=text_key,
        split=split,
        name=name,
        max_documents=max_documents,
        seed=seed,
        force=force,
    )
    job = prepare_job(config)

    from grow_cli.console import progress_bar

    progress = progress_bar("tokenizing", "docs  {task.fields[tokens]:,} tokens  {task.fields[rate]:,.0f} tok/s")
    with progress:
        task = progress.add_task("prepare", total=job.expected_documents, tokens=0, rate=0.0)

        def update(documents: int, tokens: int, seconds: float) -> None:
            progress.update(task, completed=documents, tokens=tokens, rate=tokens / seconds if seconds > 0 else 0.0)

        result = run_prepare(job, update)

    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    _print_summary(result)


def _print_summary(result) -> None:
    from grow_cli.console import stdout_console
    from rich.table import Table

    info = result.info
    table = Table(title=f"{info.prefix} ({info.tokenizer.name}, vocab {info.vocab_size}, {info.dtype})")
    table.add_column("split")
    table.add_column("documents", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("files")
    for split, counts in (("train", info.train), ("valid", info.valid)):
        table.add_row(split, f"{counts.documents:,}", f"{counts.tokens:,}", info.split_prefix(split) + ".{bin,idx}")
    total = info.train.tokens + info.valid.tokens
    table.add_row("total", f"{info.train.documents + info.valid.documents:,}", f"{total:,}", f"{info.prefix}.json")
    console = stdout_console()
    console.print(table)
    console.print(
        f"{result.tokens_per_second:,.0f} tokens/s with {result.workers} worker(s) in {result.seconds:.1f} s"
        + (f"; skipped {result.skipped_empty:,} empty documents" if result.skipped_empty else "")
    )


@app.command("tokenizer")
def train_tokenizer(
    inputs: Annotated[
        list[str],
        typer.Option("--input", "-i", help="Repeatable: local .jsonl/.json/.parquet/.txt files (or .gz), a directory, a quoted glob, or `shakespeare`."),
    ],
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size of the trained BPE (256 bytes, the EOS token, merges).")],
    out: Annotated[str, typer.Option(help="Output directory: tokenizer.json, tokenizer_config.json, special_tokens_map.json.")],
    held_out: Annotated[float, typer.Option(help="Share of documents kept out of training to measure bytes per token.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the document-level held-out split.")] = 1234,
    eos: Annotated[str, typer.Option(help="The end-of-text special token (the document separator).")] = "<|endoftext|>",
    text_key: Annotated[str, typer.Option(help="JSON field / parquet column holding the text.")] = "text",
    max_documents: Annotated[int | None, typer.Option(help="Read at most this many non-empty documents.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Train a byte-level BPE tokenizer on local documents (Hugging Face `tokenizers`); the directory
    loads with `grow data prepare --tokenizer DIR` and transformers' AutoTokenizer.from_pretrained(DIR)."""
    from grow_cli.data.bpe import BPETrainingConfig, train_bpe

    result = train_bpe(
        BPETrainingConfig(
            inputs=tuple(inputs), out=out, vocab_size=vocab_size, held_out=held_out, seed=seed, eos=eos,
            text_key=text_key, max_documents=max_documents, force=force,
        )
    )
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    measured = (
        f"{result.bytes_per_token:.3f} bytes/token on {result.held_out_documents} held-out document(s)"
        if result.bytes_per_token is not None
        else "no held-out documents (raise --held-out to measure bytes/token)"
    )
    typer.echo(
        f"{result.out}: vocab {result.vocab_size:,} trained on {result.train_documents:,} document(s) in "
        f"{result.seconds:.1f} s; {measured}"
    )
