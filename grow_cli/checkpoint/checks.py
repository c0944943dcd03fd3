"""Checks every command makes before it reads or writes a checkpoint.

Expand, export, import and training each refuse the same mistakes: a checkpoint whose tensors do
not match its recorded shape, a checkpoint of another architecture, an output that overlaps its
input. One function per check, so every command says the same thing.
"""

from __future__ import annotations

from pathlib import Path

from grow_cli.checkpoint.layout import EMBEDDING, TensorSpec, is_training_state, tensor_specs
from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape


def check_model_tensors(reader, shape: ModelShape, *, refuse_unknown: bool) -> list[TensorSpec]:
    """The specs of every weight `shape` implies, checked against the checkpoint `reader` opened.

    The embedding's row count (the vocabulary as padded when it was written) is taken from the
    checkpoint. `refuse_unknown` also refuses model tensors `shape` does not account for (those a
    command would silently drop); training state (optimizer, RNG) is never a model tensor.
    """
    if not reader.has(EMBEDDING):
        raise GrowError(f"{reader.path} has no tensor {EMBEDDING}: not a complete grow model checkpoint")
    rows = reader.shape(EMBEDDING)[0]
    if rows < shape.vocab:
        raise GrowError(f"{reader.path}: embedding has {rows} rows, fewer than the recorded vocab {shape.vocab}")
    specs = tensor_specs(shape, rows)
    missing = [spec.key for spec in specs if not reader.has(spec.key)]
    if missing:
        raise GrowError(f"{reader.path} has no tensor {', '.join(missing)}: not a complete grow model checkpoint")
    if refuse_unknown:
        found = {key for key in reader.tensor_keys() if not is_training_state(key)}
        unknown = sorted(found - {spec.key for spec in specs})
        if unknown:
            raise GrowError(
                f"{reader.path} holds tensors grow cannot carry over ({', '.join(unknown)}); "
                "only Llama-style GPT weights are supported"
            )
    for spec in specs:
        if reader.shape(spec.key) != spec.shape:
            raise GrowError(
                f"{reader.path}: {spec.key} has shape {reader.shape(spec.key)}, but the recorded model shape "
                f"({shape.describe()}) implies {spec.shape}; the checkpoint is inconsistent"
            )
    return specs


def check_not_input(out: Path, source: Path) -> None:
    """Refuse an output that is, contains or lies inside the input (--force would destroy the input)."""
    out, source = Path(out).resolve(), Path(source).resolve()
    if out == source or source in out.parents or out in source.parents:
        raise GrowError(
            f"output {out} overlaps the input {source} (it must not be the source, inside it, or contain it); "
            "write the result somewhere else"
        )


def same_architecture(a: ModelShape, b: ModelShape) -> bool:
    """Whether two shapes have the same tensors (they may differ in sequence length, RoPE base...)."""
    return _architecture(a) == _architecture(b)


def _architecture(shape: ModelShape) -> tuple:
    return (shape.hidden, shape.ffn, shape.layers, shape.heads, shape.kv_groups, shape.head_dim, shape.vocab,
            shape.tied_embeddings)


def check_architecture(what: str, found: ModelShape, needed: ModelShape) -> None:
    """Refuse loading `what` (e.g. "--init PATH"), of shape `found`, where `needed` is expected."""
    if not same_architecture(found, needed):
        raise GrowError(
            f"{what} has shape {found.describe()}, but this run needs {needed.describe()}; "
            "expand it to this size first (grow expand) or pick the matching stage"
        )
