"""Two fixes to megatron-core 0.16 that resuming needs when Adam is torch's (no TE / Apex).

Without Transformer Engine or Apex, megatron's DistributedOptimizer wraps `torch.optim.Adam`,
which keeps a per-parameter `step` tensor. Loading a `fully_reshardable` optimizer checkpoint
first restores `step` for every parameter from the saved param groups, then copies the saved
per-parameter tensors (`param`, `exp_avg`, `exp_avg_sq`, deliberately without `step`) into every
key of the live state:
1. including `step`, which fails with `KeyError: 'step'`;
2. and the restored `step` is ONE tensor shared by every parameter, which torch's multi-tensor
   Adam then increments once per parameter per update: bias correction goes wrong from the first
   step after a resume and the run silently diverges from the uninterrupted one.
This happens on any machine without TE/Apex (every CPU run, and GPUs without them). The fix
leaves `step` out of that copy and gives each parameter its own copy of the restored step.
Nothing changes when TE or Apex provide the optimizer (their Adam keeps `step` per group).
"""

from __future__ import annotations

_applied = False


def apply() -> None:
    """Install the fix once per process (no-op when TE/Apex supply Adam)."""
    global _applied
    if _applied:
        return
    from megatron.core.optimizer import distrib_optimizer

    _applied = True
    if distrib_optimizer.HAVE_APEX_OR_TE:
        return
    original = distrib_optimizer.DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states_keeping_step(self, model_param, tensors):
        if "step" in tensors or self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
        step = state.pop("step", None)
        try:
            return original(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step.clone()

    distrib_optimizer.DistributedOptimizer._set_main_param_and_optimizer_states = set_states_keeping_step
