"""`grow plan` through the real console entry point: JSON, plan files, plots, user errors, imports."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import yaml
from conftest import run_grow

from grow_cli.planning.planfile import SCHEMA_VERSION, load_plan
from grow_cli.shape import PRESETS

TINY = ["plan", "--sizes", "2M,4M", "--tokens-per-param", "20", "--seq-len", "128", "--global-batch", "8"]


def _json(args: list[str]) -> dict:
    proc = run_grow([*args, "--json"])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_reference_json():
    data = _json(["plan", "--max", "8B", "--chinchilla", "2x"])
    stages = data["stages"]
    assert [s["name"] for s in stages] == ["1B", "2B", "4B", "8B"]
    for stage in stages:
        preset = PRESETS[stage["name"]]
        shape = stage["shape"]
        assert (shape["hidden"], shape["ffn"], shape["layers"], shape["heads"], shape["kv_groups"]) == (
            preset.hidden,
            preset.ffn,
            preset.layers,
            preset.heads,
            preset.kv_groups,
        )
        for key in ("params_nonembedding", "params_total", "tokens_scratch", "tokens_incremental", "flops_scratch", "flops_incremental", "lr"):
            assert key in stage
    assert [round(s["flops_scratch"] / 1e21, 2) for s in stages] == [0.24, 0.96, 3.84, 15.36]
    assert [s["lr"] for s in stages] == [1.5e-3, 1.1e-3, 7e-4, 3e-4]
    assert stages[-1]["tokens_scratch"] == 320e9
    assert [round(s["params_nonembedding"] / 1e9, 2) for s in stages] == [1.09, 2.09, 4.01, 8.03]
    totals = data["totals"]
    assert round(totals["flops_independent"] / 1e21, 1) == 20.4
    assert round(totals["flops_progressive"] / 1e21, 1) == 15.4
    assert round(totals["saving_fraction"], 2) == 0.25
    conventions = {c["convention"]: c for c in data["report"]["conventions"]}
    assert conventions["reference"]["ratio_to_plan"] == [1.0] * 4
    assert all(r > 1 for r in conventions["megatron"]["ratio_to_plan"])
    # 8B: 146 GiB on one H100; 4B: 75.7 GiB, just over the 75.6 GiB usable (18 bytes/param at DP 1)
    assert [w["stage"] for w in data["report"]["memory_warnings"]] == ["4B", "8B"]


def test_tiny_plan_file_round_trip_and_force(tmp_path):
    out = tmp_path / "plan.yaml"
    proc = run_grow([*TINY, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "wrote plan" in proc.stdout and "saved" in proc.stdout
    plan = load_plan(out)
    assert [s.name for s in plan.stages] == ["2M", "4M"]
    assert plan.stages[1].init_from == "2M" and plan.stages[0].shape.seq_len == 128
    assert plan.stages[0].train_iters == 39063  # ceil(40M tokens / (8 x 128))
    assert sum(s.flops_incremental for s in plan.stages) == pytest.approx(plan.stages[-1].flops_scratch)
    before = out.read_text()
    again = run_grow([*TINY, "--chinchilla", "1x", "--out", str(out)])
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert out.read_text() == before
    forced = run_grow(["plan", "--sizes", "2M,4M,8M", "--seq-len", "128", "--global-batch", "8", "--out", str(out), "--force"])
    assert forced.returncode == 0, forced.stderr
    assert len(load_plan(out).stages) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_show_prints_a_saved_plan_identically(tmp_path):
    out = tmp_path / "plan.yaml"
    assert run_grow(["plan", "--max", "8B", "--chinchilla", "2x", "--fixed-data", "--out", str(out)]).returncode == 0
    original = _json(["plan", "--max", "8B", "--chinchilla", "2x", "--fixed-data"])
    shown = _json(["plan", "--show", str(out)])
    assert shown == original
    table = run_grow(["plan", "--show", str(out)])
    assert table.returncode == 0 and "140B" in table.stdout and "24.7% saved" in table.stdout


def test_plot(tmp_path):
    path = tmp_path / "plan.png"
    proc = run_grow(["plan", "--max", "8B", "--chinchilla", "2x", "--fixed-data", "--plot", str(path)])
    assert proc.returncode == 0, proc.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["plan.png"]


def test_auto_shapes_fit_the_requested_tp():
    data = _json(["plan", "--max", "8B", "--tp", "2", "--gpus", "16", "--auto-shapes"])
    for stage in data["stages"]:
        assert stage["shape"]["heads"] % 2 == 0 and stage["shape"]["ffn"] % 2 == 0
        assert stage["layout"] == {"tp": 2, "pp": 1, "dp": 8}
    assert data["report"]["memory_warnings"] == []


def _newer_plan(tmp_path):
    path = tmp_path / "newer.yaml"
    path.write_text(yaml.safe_dump({"schema_version": SCHEMA_VERSION + 1, "stages": []}))
    return str(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "--max", "8X"], "cannot read --max size '8X'"),
        (["plan", "--max", "8B", "--chinchilla", "abc"], "cannot read --chinchilla multiplier 'abc'"),
        (["plan", "--sizes", "4B,2B"], "sizes must strictly increase"),
        (["plan", "--max", "8B", "--tp", "2"], "4B cannot run at TP=2"),
        (["plan", "--max", "8B", "--gpu", "tpu"], "unknown GPU kind 'tpu'"),
        (["plan", "--max", "8B", "--flops-convention", "kaplan"], "unknown FLOPs convention"),
        (["plan", "--max", "8B", "--law", "kaplan"], "unknown scaling law"),
        (["plan", "--max", "8B", "--lr-ladder", "fast"], "cannot read --lr-ladder"),
        (["plan", "--max", "70B", "--kv-groups", "many"], "cannot read --kv-groups"),
        (["plan", "--sizes", "2B,8B", "--kv-groups", "8"], "20 heads cannot be split into 8 KV groups"),
        (["plan", "--max", "8B", "--gpus", "8", "--global-batch", "12"], "not divisible by micro batch"),
        (["plan", "--max", "8B", "--mfu", "40"], "--mfu 40.0 must be a fraction"),
        (["plan", "--max", "8B", "--plot", "plan.jpgx"], "--plot plan.jpgx"),
        (["plan", "--show", "missing.yaml"], "does not exist"),
        (["plan", "--show", "NEWER"], "newer than this grow understands"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, args, message):
    args = [_newer_plan(tmp_path) if a == "NEWER" else a for a in args]
    proc = run_grow(args, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    if "TP=2" in message:
        assert "Feasible TP: 1, 5" in lines[0] and "--auto-shapes" in lines[0]


def test_help_and_plan_do_not_import_torch_or_megatron():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from grow_cli.app import app\n"
        "runner = CliRunner()\n"
        "assert runner.invoke(app, ['--help']).exit_code == 0\n"
        "result = runner.invoke(app, ['plan', '--max', '8B', '--chinchilla', '2x'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert '15.4' in result.output\n"
        "result = runner.invoke(app, ['plan', '--max', '8B', '--json'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = sorted(m for m in ('torch', 'megatron', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_parameter_columns_are_labelled_and_an_out_of_range_loss_is_not_printed():
    """A 2M model on 40M tokens is far below the law's fit (70M params, 5B tokens): no prediction."""
    from grow_cli.planning.laws import get_law

    proc = run_grow(["plan", "--sizes", "2M,8B", "--tokens-per-param", "20", "--seq-len", "128", "--global-batch", "8"])
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "non-emb. params" in text and "total params" in text and "Llama-3-8B" in text
    assert "outside the" in text and "fitted range" in text
    data = _json(["plan", "--sizes", "2M,8B", "--tokens-per-param", "20", "--seq-len", "128", "--global-batch", "8"])
    tiny, large = data["stages"]
    law = get_law("besiroglu2024")
    # closed form, independently: E + A/N^alpha + B/D^beta with the refit's constants
    raw = 1.8172 + 482.01 / tiny["params_total"] ** 0.3478 + 2085.43 / tiny["tokens_scratch"] ** 0.3658
    assert law.loss(tiny["params_total"], tiny["tokens_scratch"]) == pytest.approx(raw)
    assert not law.predicts(tiny["params_total"], tiny["tokens_scratch"], 50257)
    assert not law.predicts(1e9, 1e11, vocab=2)  # any loss is above ln 2: not a prediction
    assert tiny["predicted_loss"] is None and tiny["loss_outside_fit"] is True
    expected = 1.8172 + 482.01 / large["params_total"] ** 0.3478 + 2085.43 / large["tokens_scratch"] ** 0.3658
    assert large["loss_outside_fit"] is False and large["predicted_loss"] == pytest.approx(expected, rel=1e-12)



def test_tables_off_a_terminal_are_whole_and_warnings_go_to_stderr(monkeypatch):
    """Under SLURM or in CI stdout is a file: rich assumed 80 columns there and cut the 70B
    series' cells (`2,002,…`). Every training-table row keeps its iteration count whole, and
    the memory warnings are on stderr, not mixed into the tables."""
    monkeypatch.delenv("COLUMNS", raising=False)
    args = ["plan", "--max", "70B", "--fixed-data"]
    proc = run_grow(args)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    data = _json(args)
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()[:1] and "e-" in line}
    for stage in data["stages"]:
        assert f"{stage['train_iters']:,}" in rows[stage["name"]]
    warned = [w["stage"] for w in data["report"]["memory_warnings"]]
    assert warned and "warning" not in proc.stdout
    assert [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("warning:")] == warned


def _worked_example() -> tuple[list[str], list[list[str]], str]:
    """docs/planning.md §9: its `grow plan` command, its table rows and the prose after them."""
    from conftest import REPO

    text = (REPO / "docs" / "planning.md").read_text()
    section = text[text.index("## 9. Worked example") :]
    command = re.search(r"`grow (plan [^`]+)`", section).group(1).split()
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip() in PRESETS
    ]
    return command, rows, section


def _num(cell: str) -> float:
    return float(re.match(r"[\d.,e+-]+", cell.replace(",", "")).group(0))


def test_worked_example_matches_the_planner():
    """The doc's worked example is read back and every cell compared with the planner's plan
    (parsed as numbers, rounded the way the doc writes them)."""
    command, rows, prose = _worked_example()
    data = _json(command)
    stages = {s["name"]: s for s in data["stages"]}
    assert [row[0] for row in rows] == list(stages)
    for row in rows:
        s = stages[row[0]]
        shape = s["shape"]
        assert row[1] == f"{shape['hidden']}/{shape['ffn']}/{shape['layers']}/{shape['heads']}", row
        got = [_num(c) for c in row[2:9]] + [float(row[9]), _num(row[10]), _num(row[11]), _num(row[12])]
        want = [
            round(s["params_nonembedding"] / 1e9, 2), round(s["params_total"] / 1e9, 2),
            s["tokens_scratch"] / 1e9, s["tokens_incremental"] / 1e9,
            *(round(s[k] / 1e21, 2) for k in ("flops_scratch", "flops_incremental", "flops_cumulative")),
            s["lr"], round(s["predicted_loss"], 3), round(s["gpu_hours"]), round(s["memory_per_gpu_gb"], 1),
        ]
        assert got == want, f"docs/planning.md §9 row {row[0]}: {got} but the planner gives {want}"
        # the total is counted on the tokenizer's vocabulary (untied: embedding + output layer)
        assert s["params_total"] == s["params_nonembedding"] + 2 * shape["vocab"] * shape["hidden"]
        repeated = re.search(r"\((\d+)B re-read\)", row[5])
        assert (float(repeated.group(1)) if repeated else 0.0) == (s["repeated_tokens"] or 0) / 1e9
    totals = data["totals"]
    big = stages["8B"]  # memory holds the built tensors: GPT-2's 50257 rows padded to a multiple of 128 x 8
    built_8b = big["params_nonembedding"] + 2 * math.ceil(big["shape"]["vocab"] / 1024) * 1024 * big["shape"]["hidden"]
    single = _json([c for c in command if c not in ("--gpus", "8")])
    conventions = [c for c in data["report"]["conventions"] if c["convention"] != "reference"]
    per_1b = sorted(round(100 * (c["ratio_to_plan"][0] - 1)) for c in conventions)
    per_8b = sorted(round(100 * (c["ratio_to_plan"][-1] - 1)) for c in conventions)
    savings = sorted(round(100 * c["saving_fraction"], 1) for c in conventions)
    for phrase in (
        f"**{totals['flops_independent'] / 1e21:.1f} ZFLOPs**",
        f"**{totals['flops_progressive'] / 1e21:.2f} ZFLOPs**: **{totals['saving_fraction']:.1%} saved**",
        f"{totals['tokens_progressive'] / 1e9:.0f}B for the series vs {totals['tokens_largest_scratch'] / 1e9:.0f}B",
        f"{totals['repeated_tokens'] / 1e9:.0f}B are re-read",
        f"{totals['gpu_hours_progressive']:,.0f} for the series vs {totals['gpu_hours_independent']:,.0f} from scratch",
        f"{per_1b[0]}–{per_1b[-1]}% more per token", f"the 8B {per_8b[0]}–{per_8b[-1]}%",
        f"saving stays {savings[0]}–{savings[-1]}%",
        f"~{single['stages'][-1]['memory_per_gpu_gb']:.0f} GiB on one GPU",
        f"18 × {built_8b / 1e9:.2f}e9 bytes", f"brings it to {stages['8B']['memory_per_gpu_gb']:.1f} GiB",
        f"{totals['law_optimal_params'] / 1e9:.1f}B-parameter model and {totals['law_optimal_tokens'] / 1e9:.0f}B tokens",
    ):
        assert phrase in " ".join(prose.split()), f"docs/planning.md §9 should say {phrase!r}"
    warned = {w["stage"]: w for w in single["report"]["memory_warnings"]}
    assert sorted(warned) == ["4B", "8B"] and f"~{warned['4B']['memory_gib']:.1f} GiB" in prose
    assert [warned[n]["suggested_layout"] for n in ("4B", "8B")] == [{"tp": 1, "pp": 1, "dp": 2}, {"tp": 2, "pp": 1, "dp": 1}]
