"""`examples/demo.sh --quick` (what `make demo-quick` runs): the README's first command, end to end.

The full demo is the same script with a larger corpus and budget; this runs its whole pipeline
(tokenizer training, data preparation, both plans, `grow series --with-scratch`, the verdict) on
the quick settings. References: the plan file (the largest stage's scratch budget in FLOPs, which
growth and scratch must each have spent), the series report and the verdict the script prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_demo_runs_the_whole_pipeline(tmp_path):
    from grow_cli.planning.planfile import load_plan

    work = tmp_path / "demo"
    env = dict(os.environ, GROW=str(Path(sys.executable).with_name("grow")), PYTHONWARNINGS="ignore")
    proc = subprocess.run(["bash", str(REPO / "examples" / "demo.sh"), "--quick", str(work)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    plan = load_plan(work / "plan.yaml")
    largest = plan.stages[-1]
    verdict = re.search(rf"seed 1: {largest.name} growth (\S+) at (\S+) FLOPs, scratch (\S+) at (\S+): growth (lower|NOT lower)", proc.stdout)
    assert verdict, proc.stdout[-2000:]
    growth_loss, growth_flops, scratch_loss, scratch_flops = map(float, verdict.groups()[:4])
    # equal real compute: both spent the largest stage's scratch budget (whole batches: within 3%)
    assert growth_flops == pytest.approx(largest.flops_scratch, rel=0.03)
    assert scratch_flops == pytest.approx(largest.flops_scratch, rel=0.03)
    assert (verdict.group(5) == "lower") == (growth_loss < scratch_loss)

    report = json.loads((work / "series-seed1" / "report" / "series.json").read_text())
    rows = {(m["name"], m["method"]): m for m in report["members"]}
    assert rows[(largest.name, "growth")]["valid_loss"] == pytest.approx(growth_loss, abs=1e-4)
    assert rows[(largest.name, "scratch")]["valid_loss"] == pytest.approx(scratch_loss, abs=1e-4)
    assert [name for name, method in rows if method == "growth"] == [s.name for s in plan.stages]
