"""The megatron-core release differences grow knows (`grow_cli.runtime.megatron_compat`), checked
against the installed release: the resume fix is needed exactly where the gate says, and with it
a resumed DistributedOptimizer continues bit for bit (the reference: the same optimizer not
interrupted); the common state of a checkpoint reads the same whichever layout holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from grow_cli.runtime import megatron_compat

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("resume")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(SCRIPTS / "optimizer_resume.py"), str(work), str(work / "r.json")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads((work / "r.json").read_text())


def test_the_resume_fix_is_needed_exactly_where_the_gate_says(resumed):
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        pytest.skip("TE/Apex provide Adam: the fault needs torch's Adam")
    megatron = resumed["megatron"]
    broken = megatron["error"] is not None or megatron["distinct_steps"] < megatron["params"] or megatron["max_abs_diff"] != 0.0
    assert broken == megatron_compat.resume_step_fix_needed(), (
        f"megatron-core {megatron_compat.MEGATRON_VERSION} without the fix: {megatron}; update RESUME_STEP_FIXED_IN"
    )


def test_a_resumed_optimizer_continues_exactly_with_the_fix(resumed):
    fixed = resumed["fixed"]
    assert fixed["error"] is None
    assert fixed["distinct_steps"] == fixed["params"] > 0  # one step tensor per parameter
    assert fixed["steps"] == [2.0] * fixed["params"]
    assert fixed["max_abs_diff"] == 0.0


def test_the_gate_compares_releases():
    if megatron_compat.RESUME_STEP_FIXED_IN is None:
        assert megatron_compat.resume_step_fix_needed(Version("0.16.1"))
        assert megatron_compat.resume_step_fix_needed(Version("99.0"))
    else:
        assert megatron_compat.resume_step_fix_needed(Version("0.16.1"))
        assert not megatron_compat.resume_step_fix_needed(megatron_compat.RESUME_STEP_FIXED_IN)


def test_common_state_reads_from_either_layout(tmp_path):
    """What megatron's own save writes (this release's layout) and a legacy `common.pt` read back
    the same through grow, and megatron's loader agrees with both."""
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from grow_cli.checkpoint.metadata import read_common
    from grow_cli.errors import GrowError
    from grow_cli.runtime.distributed import init_distributed, shutdown

    init_distributed()
    try:
        common = {"grow": {"shape": [1, 2]}, "train": {"state": {"iteration": 7}}}
        tensor = ShardedTensor.from_rank_offsets("w", torch.arange(4.0))
        native = tmp_path / "native"
        native.mkdir()
        dist_checkpointing.save({"w": tensor, **common}, str(native))
        assert read_common(native) == common
        assert dist_checkpointing.load_common_state_dict(str(native)) == common
    finally:
        shutdown()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(common, legacy / megatron_compat.LEGACY_COMMON_FILE)
    assert read_common(legacy) == common
    with pytest.raises(GrowError, match="not a complete torch_dist checkpoint"):
        read_common(tmp_path)
