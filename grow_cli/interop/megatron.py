"""`grow megatron-args`: the `pretrain_gpt.py` command line that continues from a checkpoint.

Megatron-LM builds its model from flags, and its defaults are not Llama's: a forgotten
`--untie-embeddings-and-output-weights` drops the output layer, a forgotten `--norm-epsilon`
(which `--use-checkpoint-args` never copies) silently changes every logit after `--width iso`.
So the flags come from the checkpoint, not from memory. A checkpoint grow wrote carries grow's own
optimizer and RNG layouts, which Megatron-LM does not read: its flags skip them, and a checkpoint
without training state (expanded, imported) starts a new run from its weights (`--finetune`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grow_cli.checkpoint.layout import EMBEDDING, is_training_state
from grow_cli.checkpoint.megatron_lm import FORMAT, pretrain_gpt_flags
from grow_cli.checkpoint.metadata import read_info
from grow_cli.checkpoint.rundir import TRACKER_FILE, resolve_checkpoint
from grow_cli.checkpoint.tensors import CheckpointReader
from grow_cli.shape import ModelShape


@dataclass(frozen=True)
class MegatronLaunch:
    """How to hand a checkpoint to Megatron-LM: the directory for `--load` and the flags."""

    checkpoint: Path
    load: Path | None  # the save directory whose tracker names the checkpoint (None: there is none)
    shape: ModelShape
    padded_rows: int
    flags: tuple[str, ...]
    notes: tuple[str, ...]

    def command_line(self) -> str:
        """`pretrain_gpt.py` with these flags, one option per line, ready to paste."""
        load = ["--load", str(self.load)] if self.load is not None else []
        words = [*load, *self.flags]
        lines, current = [], []
        for word in words:
            if word.startswith("--") and current:
                lines.append(" ".join(current))
                current = []
            current.append(word)
        lines.append(" ".join(current))
        return " \\\n    ".join(["python pretrain_gpt.py", *lines])

    def to_json(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint),
            "load": str(self.load) if self.load is not None else None,
            "padded_vocab_size": self.padded_rows,
            "flags": list(self.flags),
            "notes": list(self.notes),
        }


def megatron_launch(path: str | Path, *, tp: int = 1, vocab: int | None = None) -> MegatronLaunch:
    """The Megatron-LM launch for the checkpoint at `path` at tensor-parallel degree `tp`."""
    reader = CheckpointReader(path)
    info = read_info(reader.path, vocab=vocab)
    info.shape.check_layout(tp=tp, name="the checkpoint's shape")
    rows = reader.shape(EMBEDDING)[0]
    from_megatron_lm = bool(info.lineage) and getattr(info.lineage[0].details, "format", None) == FORMAT
    trained = any(is_training_state(key) for key in reader.tensor_keys() + reader.object_keys())
    flags = pretrain_gpt_flags(info.shape, rows, grown=not trained, tp=tp)
    notes = []
    if trained and not from_megatron_lm:
        flags += ["--no-load-optim", "--no-load-rng"]
        notes.append("grow's optimizer and RNG state are not in Megatron-LM's layout: the optimizer restarts")
    save_dir = reader.path.parent
    load = save_dir if resolve_checkpoint(save_dir) == reader.path and (save_dir / TRACKER_FILE).is_file() else None
    if load is None:
        notes.append(
            f"{reader.path} is not named by a {TRACKER_FILE} in its parent: Megatron-LM would start from "
            "random weights; re-write it with this grow (grow expand/import put it under OUT/release/)"
        )
    return MegatronLaunch(reader.path, load, info.shape, rows, tuple(flags), tuple(notes))
