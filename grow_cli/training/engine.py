"""The model, optimizer and schedule of a run, and one training or validation step.

Built the way Megatron-LM's `pretrain` builds them, with megatron-core as a library:
GPTModel (this rank's pipeline stage, with the run's fusions) -> Float16Module (bf16) ->
DistributedDataParallel (gradient buffers, overlapped reduce and weight gather as
`config.speed.grad_sync` says, distributed optimizer) -> megatron optimizer ->
OptimizerParamScheduler. The TransformerConfig carries the hooks the schedules call:
`grad_scale_func`, `no_sync_func`/`grad_sync_func` and `finalize_model_grads_func` (DP
all-reduce or reduce-scatter, pipeline embedding sync, per-token gradient normalisation).

One step = zero the grad buffers, `get_forward_backward_func()` over the micro-batches of the
global batch (pipelined when PP > 1), `optimizer.step()` (clip; skip on inf/NaN),
`scheduler.step(global_batch)`. Metrics come back summed over micro-batches, data-parallel
ranks and pipeline stages, so every rank holds the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from grow_cli.dtypes import torch_dtype
from grow_cli.runtime.distributed import Runtime
from grow_cli.training.config import TrainConfig
from grow_cli.training.objective import Objective
from grow_cli.training.schedule import build_optimizer, build_scheduler


@dataclass(frozen=True)
class StepMetrics:
    """One step's results, identical on every rank."""

    sums: dict[str, float]  # metric -> summed loss over the global batch
    counts: dict[str, float]  # metric -> tokens (or items) it was summed over
    grad_norm: float | None
    skipped: bool

    def mean(self, name: str) -> float:
        return self.sums[name] / max(self.counts[name], 1.0)


class Engine:
    """Everything that changes during training, for this rank's share of the model."""

    def __init__(self, config: TrainConfig, runtime: Runtime, objective: Objective, load_init: bool = True):
        """`load_init=False` skips `config.init` (a resumed run restores its own checkpoint)."""
        from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.transformer.module import Float16Module

        from grow_cli.runtime import megatron_compat
        from grow_cli.runtime.model import build_gpt_model

        megatron_compat.apply()
        self.config = config
        self.runtime = runtime
        self.objective = objective
        self.metric_names = tuple(objective.metrics)
        dtype = torch_dtype(config.model.dtype)
        recompute = None if config.model.recompute == "none" else config.model.recompute
        self.gpt = build_gpt_model(
            config.shape, runtime.layout, dtype=dtype, attention=config.model.attention, recompute=recompute,
            sequence_parallel=config.parallel.sequence_parallel, fusions=config.speed.fusions,
        )
        if config.init is not None and load_init:
            from grow_cli.checkpoint.model_io import load_model_weights

            load_model_weights(self.gpt, config.init, expect_shape=config.shape)
        transformer_config = self.gpt.config
        module = Float16Module(transformer_config, self.gpt) if dtype == torch.bfloat16 else self.gpt
        ddp_config = config.speed.grad_sync.ddp_config(config.parallel.distributed_optimizer)
        self.model = DistributedDataParallel(config=transformer_config, ddp_config=ddp_config, module=module)
        self.optimizer = build_optimizer(config, [self.model])
        self.scheduler = build_scheduler(config, self.optimizer)

        transformer_config.grad_scale_func = self.optimizer.scale_loss
        transformer_config.finalize_model_grads_func = finalize_model_grads
        if ddp_config.overlap_grad_reduce:
            transformer_config.no_sync_func = self.model.no_sync
            transformer_config.grad_sync_func = self.model.start_grad_sync
        self._forward_backward = get_forward_backward_func()
        self.device = runtime.device

    @contextmanager
    def settled_weights(self):
        """Weights all-gathered for validation or a checkpoint, as Megatron-LM does it.

        With --overlap-param-gather the updated weight shards are gathered lazily, bucket by
        bucket, by forward pre-hooks of the next training step; until then the model holds
        stale weights on the other ranks' shards. Inside this block the hooks are off and the
        gather has been done synchronously.
        """
        if not self.model.use_forward_hook:
            yield
            return
        self.model.disable_forward_pre_hook(param_sync=True)
        try:
            yield
        finally:
            self.model.enable_forward_pre_hook()

    # ---- steps -------------------------------------------------------------------------
    def _forward_step(self, data_iterator, model):
        return self.objective.forward_step(model, next(data_iterator))

    def _run(self, batches: Iterator, forward_only: bool) -> list[dict]:
        batch = self.config.batch
        return self._forward_backward(
            forward_step_func=self._forward_step,
            data_iterator=batches,
            model=[self.model],
            num_microbatches=batch.microbatches(self.runtime.layout.dp),
            seq_length=self.config.shape.seq_len,
            micro_batch_size=batch.micro_batch,
            forward_only=forward_only,
        )

    def train_step(self, batches: Iterator) -> StepMetrics:
        """One optimizer step on the next global batch of `batches` (this rank's micro-batches)."""
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self._run(batches, forward_only=False)
        success, grad_norm, _ = self.optimizer.step()
        if success:
            self.scheduler.step(increment=self.config.batch.global_batch)
        sums, counts = self._reduce(reports)
        return StepMetrics(sums, counts, None if grad_norm is None else float(grad_norm), not success)

    @torch.no_grad()
    def eval_step(self, batches: Iterator) -> StepMetrics:
        """The objective on the next global batch of `batches`, without gradients."""
        self.model.eval()
        try:
            reports = self._run(batches, forward_only=True)
        finally:
            self.model.train()
        sums, counts = self._reduce(reports)
        return StepMetrics(sums, counts, None, False)

    def _reduce(self, reports: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
        """Sum [loss, count] per metric over micro-batches, then DP ranks, then pipeline stages."""
        from megatron.core import parallel_state

        totals = torch.zeros(len(self.metric_names), 2, dtype=torch.float64, device=self.device)
        for report in reports:
            for i, name in enumerate(self.metric_names):
                if name in report:
                    totals[i] += report[name].detach().to(totals)
        torch.distributed.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            torch.distributed.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
        values = totals.tolist()
        return (
            {name: values[i][0] for i, name in enumerate(self.metric_names)},
            {name: values[i][1] for i, name in enumerate(self.metric_names)},
        )
