"""`grow distill`'s run, resolved once: the pretrain `TrainConfig` of the student plus the settings
of the distillation loss.

The student is `grow pretrain --init CKPT` with the checkpoint's exact shape; everything else
(batch, schedule, layout, intervals, speed) is resolved by the pretrain resolution itself
(`grow_cli.training.config`), so the two commands cannot disagree on what a flag means. The checks
that only distillation has (λ, γ, the KL direction, the layouts the loss supports) run first and
read nothing, so a bad invocation fails before any file is opened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from grow_cli.distill.options import DEFAULT_GLOBAL_BATCH, DEFAULT_LR, DEFAULT_TOKENS, DIRECTIONS, DistillOptions
from grow_cli.errors import GrowError
from grow_cli.runtime.device import DevicePolicy
from grow_cli.training.config import TrainConfig, check_init_checkpoint, load_inputs, resolve
from grow_cli.training.options import PretrainOptions


@dataclass(frozen=True)
class DistillSettings:
    """The loss L = L1 + λ·L2 (spec §2) and its frozen teacher."""

    teacher: str  # absolute path of the checkpoint (also the student's --init)
    teacher_id: str  # its checkpoint_id, for the lineage
    lam: float = 1.0
    gamma: float = 0.25
    direction: str = "reverse"
    report_tokens: int = 65536

    def objective(self) -> dict:
        """What the run's identity records of the loss (the report's size does not change the training)."""
        return {"kind": "distill", "teacher_id": self.teacher_id, "lambda": self.lam, "gamma": self.gamma,
                "direction": self.direction}


def check_distill_options(options: DistillOptions, run: PretrainOptions) -> None:
    """What needs nothing but the flags."""
    if not (math.isfinite(options.lam) and options.lam >= 0):
        raise GrowError(f"--lambda must be a finite number >= 0 (the weight of the movement term), got {options.lam}")
    if not (math.isfinite(options.gamma) and options.gamma >= 0):
        raise GrowError(f"--gamma must be a finite number >= 0 (weights must not shrink with depth), got {options.gamma}")
    if options.kl not in DIRECTIONS:
        raise GrowError(f"--kl {options.kl!r}: choose one of {', '.join(DIRECTIONS)}")
    if options.report_tokens < 1:
        raise GrowError(f"--report-tokens must be at least 1, got {options.report_tokens}")
    if run.pp not in (None, 1):
        raise GrowError(
            f"grow distill runs at --pp 1, not {run.pp}: the loss reads every layer's hidden state on one stage; "
            "split a large model with --tp"
        )
    if run.recompute == "full":
        raise GrowError("grow distill cannot use --recompute full (its loss needs every layer's output); use selective or none")
    if run.sequence_parallel:
        raise GrowError("grow distill cannot use --sequence-parallel (the lens needs whole sequences on every TP rank); drop it")
    if run.overlap_param_gather:
        raise GrowError(
            "grow distill cannot use --overlap-param-gather (the lens reads the LM head outside its layer's forward); drop it"
        )


def resolve_distill(
    options: DistillOptions, run: PretrainOptions, *, world_size: int | None = None, device: DevicePolicy | None = None
) -> tuple[TrainConfig, DistillSettings]:
    """The student's run and the loss settings; GrowError (one line) on any mistake, nothing written."""
    from pathlib import Path

    from grow_cli.checkpoint.metadata import read_info
    from grow_cli.checkpoint.tensors import validate_checkpoint
    from grow_cli.runtime import env

    check_distill_options(options, run)
    if device is None:
        from grow_cli.runtime.device import device_policy

        device = device_policy()
    from grow_cli.data.info import read_data_info

    path = validate_checkpoint(options.checkpoint)
    # a Megatron-LM teacher whose args do not tell its vocabulary has the data's tokenizer's
    info = read_info(path, tokenizer_vocab=read_data_info(run.data).vocab_size)
    shape = info.shape
    flags = replace(
        run,
        hidden=shape.hidden, ffn=shape.ffn, layers=shape.layers, heads=shape.heads, kv_groups=shape.kv_groups,
        head_dim=shape.head_dim, seq_len=shape.seq_len, init=str(Path(path).resolve()),
        lr=run.lr or DEFAULT_LR, global_batch=run.global_batch or DEFAULT_GLOBAL_BATCH,
        tokens=DEFAULT_TOKENS if run.iters is None and run.tokens is None else run.tokens,
        pp=1, overlap_param_gather=False,
    )
    inputs = load_inputs(flags)
    config = resolve(flags, inputs, world_size=env.world_size() if world_size is None else world_size, device=device)
    config = replace(config, model=replace(config.model, shape=shape, name=info.stage or config.model.name), stage=info.stage)
    check_init_checkpoint(config.init, shape, inputs.data)
    settings = DistillSettings(config.init, info.checkpoint_id, options.lam, options.gamma, options.kl, options.report_tokens)
    return replace(config, objective=settings.objective()), settings
