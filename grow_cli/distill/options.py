"""The options of `grow distill`, declared once.

`DistillOptions` holds what only distillation has (the teacher checkpoint, λ, γ, the KL direction,
the size of the before/after report). The run itself takes `grow pretrain`'s options
(`PretrainOptions`) without the model's: the checkpoint fixes the shape and is the starting
point, so --plan/--size/--hidden/.../--init mean nothing here and are not on the command line.
Distillation's defaults (spec §2: lr 1e-4, batch 128, 10M tokens) differ from pretraining's; they
are constants here, applied by `grow_cli.distill.config` when the flag is not given, and the
reworded help texts name them.
"""

from dataclasses import dataclass
from typing import Annotated

import typer

from grow_cli.options import Narrowed, option
from grow_cli.training.options import PretrainOptions

DEFAULT_LR = 1.0e-4
DEFAULT_GLOBAL_BATCH = 128
DEFAULT_TOKENS = "10M"
DIRECTIONS = ("reverse", "forward")  # the kernel's names: reverse = KL(p_layer ‖ p_teacher)

DISTILL = "Distillation (spec §2)"

MODEL_OPTIONS = ("plan", "stage", "size", "hidden", "ffn", "layers", "heads", "kv_groups", "head_dim", "seq_len",
                 "init", "vocab", "from_scratch")

RUN_OPTIONS = Narrowed(
    PretrainOptions,
    drop=MODEL_OPTIONS,
    help={
        "out": "Run directory of the distillation: checkpoints, metrics.jsonl, tensorboard/, distill_report.json.",
        "tokens": f"Token budget instead of --iters (default {DEFAULT_TOKENS}, spec §2).",
        "lr": f"Peak learning rate of the cosine decay (default {DEFAULT_LR:g}).",
        "global_batch": f"Sequences per optimizer step (default {DEFAULT_GLOBAL_BATCH}).",
        "iters": "Optimizer steps instead of --tokens.",
        "warmup_iters": "Linear warmup steps (default 1% of the run).",
        "micro_batch": "Sequences per forward pass per GPU (default 1).",
        "tp": "Tensor-parallel size (default 1).",
        "pp": "Pipeline-parallel size: only 1 (every layer's state feeds the loss on one stage).",
    },
)


@dataclass(frozen=True, kw_only=True)
class DistillOptions:
    """What only `grow distill` takes."""

    checkpoint: Annotated[str, typer.Argument(help="The pretrained checkpoint: the student's start and the frozen teacher.",
                                              show_default=False)]
    lam: Annotated[float, option("--lambda", "Weight λ of the movement term L2 (>= 0).", DISTILL)] = 1.0
    gamma: Annotated[float, option("--gamma", "Depth weighting γ >= 0: w_l = softmax(γ·l), deeper layers weigh more.", DISTILL)] = 0.25
    kl: Annotated[
        str,
        option("--kl", "reverse: KL(p_layer ‖ p_teacher), the spec's formula (mode-seeking); forward: KL(p_teacher ‖ p_layer).", DISTILL),
    ] = "reverse"
    report_tokens: Annotated[
        int, option("--report-tokens", "Validation tokens for the before/after report (grow eval's measures).", DISTILL)
    ] = 65536
