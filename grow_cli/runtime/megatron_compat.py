"""What differs between the megatron-core releases grow runs on: the ONE place that knows.

grow is tested on megatron-core 0.16 (Python 3.11, `make test`) and on the newest release on
Python 3.12 (`make test-compat`, see README). Code that depends on the installed release asks
this module instead of comparing versions itself, so a new release means reading one file.

The resume fix: without Transformer Engine or Apex (every CPU run, and GPUs without them)
megatron's DistributedOptimizer wraps `torch.optim.Adam`, which keeps a per-parameter `step`
tensor. Loading a `fully_reshardable` optimizer checkpoint first restores `step` for every
parameter from the saved param groups, then copies the saved per-parameter tensors (`param`,
`exp_avg`, `exp_avg_sq`, deliberately without `step`) into every tensor of the live state:
1. including `step`, which fails with `KeyError: 'step'`;
2. and the restored `step` is ONE tensor shared by every parameter, which torch's multi-tensor
   Adam then increments once per parameter per update: bias correction goes wrong from the first
   step after a resume and the run silently diverges from the uninterrupted one.
The fix leaves `step` out of that copy and gives each parameter its own copy of the restored
step. It is harmless where megatron does it right (the live `step` is set aside and put back as
a private copy), so the gate below only has to be right about where it is needed; the test
`tests/test_megatron_compat.py` checks the gate against the installed release without the fix.
Nothing changes when TE or Apex provide the optimizer (their Adam keeps `step` per group).

Where a checkpoint keeps its common (non-tensor) state: megatron-core 0.16 writes `common.pt`
beside the torch_dist files (so does grow's streaming writer, `checkpoint.tensors`); newer
releases (0.19 checked) write it as a `common_state` object inside them and still read
`common.pt`. `read_common_state` reads either; `is_common_state` tells that object apart from
the model's objects (`_extra_state`). A 0.16 install cannot read the newer layout.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

MEGATRON_VERSION = Version(version("megatron-core"))

# The first release whose DistributedOptimizer restores torch Adam's `step` per parameter; None:
# no release does yet (read and tested through 0.19.2, where both faults are as in 0.16).
RESUME_STEP_FIXED_IN: Version | None = None
LEGACY_COMMON_FILE = "common.pt"  # where 0.16 (and grow's own writer) keep the common state
COMMON_STATE_OBJECT = "common_state/"  # newer releases: the ShardedObject's key prefix in the files

_applied = False


def resume_step_fix_needed(release: Version = MEGATRON_VERSION) -> bool:
    """Whether `release` needs the resume fix when TE/Apex do not provide Adam."""
    return RESUME_STEP_FIXED_IN is None or release < RESUME_STEP_FIXED_IN


def apply() -> None:
    """Install what the installed release needs, once per process (before building optimizers)."""
    global _applied
    if _applied:
        return
    _applied = True
    from megatron.core.optimizer import distrib_optimizer

    if resume_step_fix_needed() and not distrib_optimizer.HAVE_APEX_OR_TE:
        _install_resume_step_fix(distrib_optimizer.DistributedOptimizer)


def _install_resume_step_fix(optimizer_class) -> None:
    original = optimizer_class._set_main_param_and_optimizer_states

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

    optimizer_class._set_main_param_and_optimizer_states = set_states_keeping_step


def is_common_state(key: str) -> bool:
    """Whether a torch_dist entry is the checkpoint's common state (not part of the model)."""
    return key.startswith(COMMON_STATE_OBJECT)


def read_common_state(directory: Path) -> dict:
    """The common state of the torch_dist checkpoint `directory`, whichever release wrote it.

    `common.pt` is read as megatron-core 0.16 reads it (full unpickling: it holds grow's record
    and the run's train state); otherwise megatron's own reader takes the newer layout. Raises
    FileNotFoundError when neither is there (an incomplete checkpoint, or a newer layout under
    0.16).
    """
    import torch

    legacy = directory / LEGACY_COMMON_FILE
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=False)
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException

    try:
        return dist_checkpointing.load_common_state_dict(str(directory))
    except CheckpointingException as error:
        raise FileNotFoundError(f"{directory} holds no common state ({error})") from None
