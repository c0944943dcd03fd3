"""`grow export` and `grow import`: Hugging Face Llama directories <-> grow checkpoints;
`grow megatron-args`: the Megatron-LM command line for a checkpoint.

torch, megatron and safetensors are imported inside the commands, so `grow --help` stays instant.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from grow_cli.units import format_bytes

EXPORT_HELP = (
    "Export a grow checkpoint as a Hugging Face Llama directory.\n\n"
    "Writes config.json, generation_config.json, safetensors weights (sharded, with "
    "model.safetensors.index.json, when larger than --shard-size) and the files of the tokenizer the "
    "model was trained with: the "
    "directory loads with LlamaForCausalLM.from_pretrained, vLLM, TRL and lm-eval (--model hf). "
    "Reads one layer at a time; memory stays near one shard plus one layer."
)

IMPORT_HELP = (
    "Import a Hugging Face Llama directory as a grow checkpoint.\n\n"
    "Reads config.json and the safetensors weights (sharded or not) tensor by tensor and writes a "
    "torch_dist checkpoint that grow pretrain, expand and eval load at any TP/PP, with the model "
    "shape and an `import` lineage step recorded. Only plain Llama models (LlamaForCausalLM, no "
    "RoPE scaling, no biases) can be imported; embedding rows are zero-padded to a multiple of 128."
)


def _progress(label: str):
    """Bytes written so far, with the tensor being written."""
    from grow_cli.console import progress_bar

    return progress_bar(label, "{task.fields[item]}", counter="bytes")


def export_command(
    checkpoint: Annotated[str, typer.Argument(help="grow checkpoint directory (torch_dist), run directory, or Megatron-LM save directory.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory for the Hugging Face model.")],
    dtype: Annotated[str, typer.Option(help="Weight precision in the export: bf16 or fp32.")] = "bf16",
    shard_size: Annotated[
        str, typer.Option(help="Largest safetensors file, e.g. 5GB, 500MB, 2GiB; also bounds memory use.")
    ] = "5GB",
    tokenizer: Annotated[
        str,
        typer.Option(
            help="Tokenizer files to include: auto (the one the model was trained with), a --tokenizer spec "
            "as in grow data prepare (must match the model's vocabulary), or none."
        ),
    ] = "auto",
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    vocab: Annotated[
        int | None, typer.Option("--vocab", help="Vocabulary size, for Megatron-LM checkpoints whose args do not tell it.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    from grow_cli.interop.export import export_checkpoint
    from grow_cli.interop.safetensors_io import parse_size

    max_bytes = parse_size(shard_size)
    progress = _progress("exporting")
    with progress:
        task = progress.add_task("export", total=None, item="")
        result = export_checkpoint(
            checkpoint,
            out,
            dtype=dtype,
            shard_size=max_bytes,
            tokenizer=None if tokenizer.lower() == "none" else tokenizer,
            force=force,
            vocab=vocab,
            on_plan=lambda total: progress.update(task, total=total),
            on_tensor=lambda name, nbytes: progress.update(task, advance=nbytes, item=name),
        )
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    from grow_cli.console import stderr_console, stdout_console
    from rich.table import Table

    table = Table(title=f"exported {result.checkpoint} -> {result.out}", show_header=False)
    table.add_row("shape", result.shape.describe())
    table.add_row("vocab", f"{result.shape.vocab:,} ({'tied' if result.shape.tied_embeddings else 'untied'} embeddings)")
    table.add_row("weights", f"{result.tensors} tensors, {format_bytes(result.bytes_written)} {result.dtype} in {result.shards} file(s)")
    table.add_row("read", format_bytes(result.bytes_read))
    table.add_row("tokenizer", result.tokenizer or "none (weights only)")
    table.add_row("files", ", ".join(result.files))
    table.add_row("time", f"{result.seconds:.1f} s")
    stdout_console().print(table)
    warnings = stderr_console()
    for warning in result.warnings:
        warnings.print(f"[yellow]warning:[/yellow] {warning}")


def import_command(
    source: Annotated[str, typer.Argument(help="Hugging Face model directory (config.json + safetensors).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output grow checkpoint directory.")],
    dtype: Annotated[
        str, typer.Option(help="Checkpoint precision: source (keep bf16/fp32; fp16 becomes fp32), bf16 or fp32.")
    ] = "source",
    force: Annotated[bool, typer.Option(help="Replace an existing checkpoint.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    from grow_cli.interop.import_ import import_llama

    progress = _progress("importing")
    with progress:
        task = progress.add_task("import", total=None, item="")
        result = import_llama(
            source,
            out,
            dtype=None if dtype == "source" else dtype,
            force=force,
            on_plan=lambda total: progress.update(task, total=total),
            on_piece=lambda piece: progress.update(task, advance=piece.nbytes, item=piece.key),
        )
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    from grow_cli.console import stderr_console, stdout_console
    from rich.table import Table

    shape = result.info.shape
    table = Table(title=f"imported {result.source} -> {result.out}", show_header=False)
    table.add_row("shape", shape.describe())
    table.add_row("vocab", f"{shape.vocab:,} (stored as {result.vocab_rows:,} rows, zero padded)")
    table.add_row("precision", f"{result.dtype} (source {result.source_dtype})")
    table.add_row("written", f"{format_bytes(result.bytes_written)} in {result.pieces} pieces")
    table.add_row("lineage", " -> ".join(step.op for step in result.info.lineage))
    tokenizer = result.info.tokenizer
    table.add_row("tokenizer", f"{tokenizer.describe()}, files in tokenizer/" if tokenizer else "none recorded")
    table.add_row("time", f"{result.seconds:.1f} s")
    stdout_console().print(table)
    warnings = stderr_console()
    for warning in result.warnings:
        warnings.print(f"[yellow]warning:[/yellow] {warning}")


MEGATRON_ARGS_HELP = (
    "Print the Megatron-LM pretrain_gpt.py flags that load a checkpoint.\n\n"
    "Works for every checkpoint grow reads (grow's own, and Megatron-LM save directories): the "
    "architecture, --norm-epsilon and the vocabulary padding (which --use-checkpoint-args does not "
    "copy), --untie-embeddings-and-output-weights when untied, and --finetune --no-load-optim "
    "--no-load-rng for a checkpoint without training state (grown, imported). See docs/megatron-lm.md."
)


def megatron_args_command(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint, run directory, or Megatron-LM save directory.")],
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel degree the Megatron-LM run will use.")] = 1,
    vocab: Annotated[
        int | None, typer.Option("--vocab", help="Vocabulary size, for Megatron-LM checkpoints whose args do not tell it.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the flags as JSON on stdout.")] = False,
) -> None:
    from grow_cli.interop.megatron import megatron_launch

    launch = megatron_launch(checkpoint, tp=tp, vocab=vocab)
    if as_json:
        typer.echo(json.dumps(launch.to_json(), indent=2))
        return
    typer.echo(launch.command_line())
    for note in launch.notes:
        typer.echo(f"# note: {note}", err=True)


def register(app: typer.Typer) -> None:
    """Add `export`, `import` and `megatron-args` to the grow app."""
    app.command("export", help=EXPORT_HELP)(export_command)
    app.command("import", help=IMPORT_HELP)(import_command)
    app.command("megatron-args", help=MEGATRON_ARGS_HELP)(megatron_args_command)
