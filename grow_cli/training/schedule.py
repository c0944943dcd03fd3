"""The optimizer and the learning-rate schedule, as Megatron-LM configures them.

AdamW (betas 0.9/0.95, weight decay 0.1 except on norms, gradient clipping at 1.0) through
megatron-core's `get_megatron_optimizer`: the distributed optimizer (ZeRO-1: optimizer state and
fp32 master weights sharded over data-parallel ranks) by default, fp32 master weights for bf16
models either way. A constant loss scale of 1.0 is installed for every mixed-precision
optimizer: it changes no number, but it makes megatron check the gradients for inf/NaN and
skip the update (step() returns success=False) instead of writing NaNs into the weights, which
it otherwise does only for fp16.

The schedule is `OptimizerParamScheduler`: linear warmup from 0, then cosine decay to `min_lr` at
the last iteration. It counts SAMPLES (it is stepped by the global batch), so a run resumed at
another data-parallel size or micro batch follows the same curve.
"""

from __future__ import annotations

from grow_cli.dtypes import torch_dtype
from grow_cli.training.config import TrainConfig


def optimizer_config(config: TrainConfig):
    from megatron.core.optimizer import OptimizerConfig

    settings = config.optimizer
    bf16 = config.model.dtype == "bf16"
    mixed_precision = bf16 or config.parallel.distributed_optimizer
    return OptimizerConfig(
        optimizer="adam",
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.beta1,
        adam_beta2=settings.beta2,
        adam_eps=settings.eps,
        clip_grad=settings.clip_grad,
        bf16=bf16,
        params_dtype=torch_dtype(config.model.dtype),
        use_distributed_optimizer=config.parallel.distributed_optimizer,
        loss_scale=1.0 if mixed_precision else None,
    )


def build_optimizer(config: TrainConfig, model_chunks: list):
    """megatron-core's optimizer over the DDP-wrapped model chunks."""
    from megatron.core.optimizer import get_megatron_optimizer

    return get_megatron_optimizer(optimizer_config(config), model_chunks)


def build_scheduler(config: TrainConfig, optimizer):
    """Warmup + cosine decay over the run's samples (iterations x global batch)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    samples_per_iter = config.batch.global_batch
    total = config.batch.train_iters * samples_per_iter
    settings = config.optimizer
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=settings.lr,
        min_lr=settings.min_lr,
        lr_warmup_steps=settings.warmup_iters * samples_per_iter,
        lr_decay_steps=total,
        lr_decay_style=settings.decay_style,
        start_wd=settings.weight_decay,
        end_wd=settings.weight_decay,
        wd_incr_steps=total,
        wd_incr_style="constant",
    )


def current_lr(optimizer) -> float:
    """The learning rate of the default parameter groups (what Megatron-LM logs)."""
    from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging

    lr = get_canonical_lr_for_logging(optimizer.param_groups)
    return float(lr if lr is not None else optimizer.param_groups[0]["lr"])


