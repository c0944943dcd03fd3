"""`grow eval`: perplexity, the lm-eval adapter, the logit lens and the residual-stream geometry,
each against an independent reference (megatron's own loss, direct forwards on hand-tokenized
requests, a naive materialised lens, truncated megatron models, closed forms)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from grow_cli.evaluation.diagnostics import StreamMeter, blocks_from_pairs, convergence, movement, pca_trajectories

from conftest import REPO, run_grow, run_ranks

SCRIPT = REPO / "tests" / "scripts" / "eval_reference.py"
SCRATCH = "runs/L3/iter_0000030"  # as written by the script
GROWTH = "runs/L4/iter_0000040"


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> tuple[Path, dict]:
    """Checkpoints, data, task files and paired (ours, reference) results from one model run."""
    out = tmp_path_factory.mktemp("eval")
    run_ranks([str(SCRIPT), str(out)], nproc=1)
    return out, json.loads((out / "results.json").read_text())


def _close(a, b, tol=1e-5):
    assert a == pytest.approx(b, rel=tol, abs=tol)


# ---- model-backed checks (computed by tests/scripts/eval_reference.py) -------------------


def test_perplexity_equals_megatron_loss(ref):
    _, results = ref
    ours, reference = results["perplexity"]["ours"], results["perplexity"]["reference"]
    assert ours["tokens"] == reference["tokens"] > 1000
    _close(ours["loss"], reference["loss"], 1e-6)
    _close(ours["ppl"], reference["ppl"], 1e-5)
    _close(ours["bits_per_byte"], reference["bits_per_byte"], 1e-6)


def test_logit_lens_streamed_equals_materialised(ref):
    _, results = ref
    ours, reference = results["lens_chunked"]["ours"], results["lens_chunked"]["reference"]
    assert len(ours) == 4  # embedding + 3 layers
    for row, expected in zip(ours, reference):
        for value, want in zip(row, expected):
            _close(value, want, 2e-5)
    accuracies = [row[1] for row in ours]
    assert accuracies[-1] == pytest.approx(0.5)  # half the targets are the model's greedy picks
    assert len(set(accuracies)) > 1


def test_last_layer_lens_is_the_model_output(ref):
    _, results = ref
    for value, want in zip(results["lens_last_vs_output"]["ours"], results["lens_last_vs_output"]["reference"]):
        _close(value, want, 2e-6)
    _close(results["lens_full_last"]["ours"], results["lens_full_last"]["reference"], 2e-6)


def test_captured_states_match_truncated_models(ref):
    _, results = ref
    for layers, pair in results["capture"].items():
        ours, reference = torch.tensor(pair["ours"]), torch.tensor(pair["reference"])
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5, msg=f"after {layers} layer(s)")


def test_adapter_loglikelihood_and_generation_match_direct_forwards(ref):
    _, results = ref
    for (score, greedy), (want, want_greedy) in zip(results["loglikelihood"]["ours"], results["loglikelihood"]["reference"]):
        _close(score, want, 1e-6)
        assert greedy == want_greedy
    assert results["generate"]["ours"] == results["generate"]["reference"] != ""


def test_lm_eval_end_to_end_matches_direct_scoring(ref):
    _, results = ref
    arc, arc_ref = results["arc_easy"]["ours"], results["arc_easy"]["reference"]
    assert arc["samples"] == arc_ref["samples"] == 5
    _close(arc["acc"], arc_ref["acc"])
    _close(arc["acc_norm"], arc_ref["acc_norm"])
    _close(arc["acc_stderr"], arc_ref["acc_stderr"])
    assert arc_ref["acc"] >= 0.6  # three answer keys are the model's own favourites
    _close(results["wikitext"]["ours"]["word_perplexity"], results["wikitext"]["reference"]["word_perplexity"], 1e-6)
    lambada, lambada_ref = results["lambada"]["ours"], results["lambada"]["reference"]
    assert lambada["acc"] == lambada_ref["acc"] == 0.5
    _close(lambada["perplexity"], lambada_ref["perplexity"], 1e-6)


def test_per_layer_lambada_last_layer_equals_lm_eval(ref):
    _, results = ref
    by_layer = results["lambada_by_layer"]["ours"]
    assert len(by_layer) == 4
    acc, ppl = by_layer[-1]
    want_acc, want_ppl = results["lambada_by_layer"]["last_reference"]
    assert acc == want_acc
    _close(ppl, want_ppl, 1e-5)


# ---- the command ----------------------------------------------------------------------


def test_cli_json_on_prepared_data(ref):
    out, results = ref
    proc = run_grow(["eval", str(out / SCRATCH), "--data", str(out / "data" / "play"), "--json", "--batch-size", "16"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    reference = results["perplexity"]["reference"]
    assert record["tokens"] == reference["tokens"]  # the valid split is valid.txt + EOS
    _close(record["loss"], reference["loss"], 1e-6)
    _close(record["ppl"], reference["ppl"], 1e-5)
    assert len(record["movement"]) == 3 and all(0 <= d <= 1 for d in record["movement"])
    assert record["convergence"] == pytest.approx(convergence(record["movement"]))
    assert record["movement"] == pytest.approx(results["geometry"]["movement"], rel=1e-6)
    assert [row["layer"] for row in record["lens"]] == [-1, 0, 1, 2]
    _close(record["lens"][-1]["loss"], reference["loss"], 1e-5)
    assert record["method"] == "scratch"


def test_cli_series_table_markdown_and_plots(ref):
    out, _ = ref
    markdown, plots = out / "series.md", out / "figs"
    # a run directory stands for its newest checkpoint
    args = ["eval", str(out / "runs" / "L4"), str(out / SCRATCH), "--text", str(out / "valid.txt"), "--max-tokens", "300",
            "--tasks", "arc_easy,lambada_openai", "--task-data", str(out / "tasks"), "--bootstrap-iters", "10",
            "--markdown", str(markdown), "--plots", str(plots), "--json"]
    proc = run_grow(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = json.loads(proc.stdout)["models"]
    assert [(m["name"], m["method"], m["layers"]) for m in models] == [("L3", "scratch", 3), ("L4", "growth", 4)]
    # training cost: the run's own FLOPs, plus the FLOPs of the run the expansion read
    assert (models[0]["train_flops_own"], models[0]["train_flops_inherited"]) == (30e9, 0.0)
    assert (models[1]["train_flops_own"], models[1]["train_flops_inherited"]) == (80e9, 30e9)
    assert all(m["tokens"] == 300 and "acc_norm" in m["tasks"]["arc_easy"] for m in models)
    assert len(models[1]["lambada_by_layer"]) == 5
    text = markdown.read_text()
    assert "| L4 | growth |" in text and "ARC-e" in text and "LAMBADA acc %" in text
    assert sorted(p.name for p in plots.iterdir()) == [
        "lens.png", "loss_vs_flops.png", "movement.png", "pca_L3_scratch_it30.png", "pca_L4_growth_it40.png"
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots.iterdir())
    again = run_grow(args)  # outputs exist: refused without --force
    assert again.returncode == 2 and "--force" in again.stderr


def test_cli_plan_and_run_patterns(ref, tmp_path):
    out, results = ref
    plan = tmp_path / "plan.yaml"
    assert run_grow(["plan", "--sizes", "2M,4M", "--seq-len", "64", "--global-batch", "8", "--out", str(plan)]).returncode == 0
    (tmp_path / "grow").mkdir()
    (tmp_path / "grow" / "2M").symlink_to(out / "runs" / "L3")  # the plan's stage names, pointing at our runs
    (tmp_path / "grow" / "4M").symlink_to(out / "runs" / "L4")
    proc = run_grow(["eval", "--plan", str(plan), "--runs", str(tmp_path / "grow" / "{stage}"), "--runs", str(tmp_path / "none" / "{stage}"),
                     "--text", str(out / "valid.txt"), "--no-layers", "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = json.loads(proc.stdout)["models"]
    assert [Path(m["checkpoint"]).name for m in models] == ["iter_0000030", "iter_0000040"]
    _close(models[0]["loss"], results["perplexity"]["reference"]["loss"], 1e-6)
    assert "movement" not in models[0]


@pytest.mark.parametrize(
    "case",
    ["not_a_checkpoint", "task_without_data", "vocab_mismatch", "empty_text"],
)
def test_cli_bad_inputs_fail_with_one_line(ref, case):
    out, _ = ref
    args = {
        "not_a_checkpoint": ["eval", str(out / "tasks"), "--text", str(out / "valid.txt")],
        "task_without_data": ["eval", str(out / SCRATCH), "--tasks", "piqa", "--task-data", str(out / "tasks")],
        "vocab_mismatch": ["eval", str(out / "vocab1000"), "--data", str(out / "data" / "play")],
        "empty_text": ["eval", str(out / SCRATCH), "--text", str(out / "empty.txt")],
    }[case]
    proc = run_grow(args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert not proc.stderr.startswith("\n")  # no blank line from a progress display before the error
    expected = {"not_a_checkpoint": "not a torch_dist checkpoint", "task_without_data": "no data for task piqa",
                "vocab_mismatch": "vocab 1000", "empty_text": "no text"}[case]
    assert expected in lines[0]


def test_cli_reuses_the_results_of_an_unchanged_checkpoint(ref, tmp_path, monkeypatch):
    """A re-run with the same checkpoint files, text and settings prints the stored results; a
    touched checkpoint file, another setting or --no-cache evaluates again."""
    import os
    import shutil

    out, _ = ref
    cache = tmp_path / "cache"
    monkeypatch.setenv("GROW_EVAL_CACHE", str(cache))
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(out / SCRATCH, checkpoint)
    args = ["eval", str(checkpoint), "--text", str(out / "valid.txt"), "--max-tokens", "300", "--diag-tokens", "64", "--json"]

    def evaluate(*extra: str) -> tuple[dict, bool]:
        proc = run_grow([*args, *extra], timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout), "unchanged since it was evaluated" in proc.stderr

    first, hit = evaluate()
    assert not hit and len(list(cache.glob("*.json"))) == 1
    again, hit = evaluate()
    assert hit and again == first  # the measurements, bit for bit, and the record read afresh
    fresh, hit = evaluate("--no-cache")
    assert not hit and fresh["loss"] == pytest.approx(first["loss"], rel=1e-6)
    _, hit = evaluate("--batch-size", "2")
    assert not hit and len(list(cache.glob("*.json"))) == 2
    weights = next(p for p in checkpoint.iterdir() if p.suffix == ".distcp")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    _, hit = evaluate()
    assert not hit and len(list(cache.glob("*.json"))) == 3


def test_cli_names_a_missing_checkpoint_before_anything_else(tmp_path):
    missing = tmp_path / "nonexistent"
    proc = run_grow(["eval", str(missing)], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: checkpoint {missing} does not exist or is not a directory"]


@pytest.mark.slow
def test_tensor_parallel_eval_matches_single_process(ref):
    out, results = ref
    proc = run_grow(["eval", str(out / SCRATCH), "--text", str(out / "valid.txt"), "--tp", "2", "--json",
                     "--tasks", "lambada_openai", "--task-data", str(out / "tasks"), "--bootstrap-iters", "10"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    _close(record["loss"], results["perplexity"]["reference"]["loss"], 1e-5)
    assert record["movement"] == pytest.approx(results["geometry"]["movement"], rel=1e-5)
    assert record["tasks"]["lambada_openai"]["acc"] == results["lambada"]["reference"]["acc"]
    assert [row["acc"] for row in record["lambada_by_layer"]] == [row[0] for row in results["lambada_by_layer"]["ours"]]


# ---- residual-stream geometry on constructed states ---------------------------------------


def _rotating_states(moves: list[float], hidden: int = 8) -> torch.Tensor:
    """States in a random 2-D plane of R^hidden, each layer turning by the angle whose movement is
    d (cos = 1 - 2d), with arbitrary norms: [L + 1, b=2, s=3, hidden]."""
    generator = torch.Generator().manual_seed(0)
    plane, _ = torch.linalg.qr(torch.randn(hidden, 2, generator=generator, dtype=torch.float64))
    angles = [0.0]
    for d in moves:
        angles.append(angles[-1] + math.acos(1 - 2 * d))
    norms = torch.rand(len(angles), generator=generator, dtype=torch.float64) * 5 + 0.5
    points = torch.stack([r * (plane @ torch.tensor([math.cos(a), math.sin(a)], dtype=torch.float64)) for r, a in zip(norms, angles)])
    return points[:, None, None, :].expand(-1, 2, 3, -1).float(), angles


def test_monotone_movement_has_convergence_one():
    states, _ = _rotating_states([0.4, 0.25, 0.1, 0.02])
    meter = StreamMeter(num_states=5)
    meter.add(states)
    result = meter.result()
    assert result.movement == pytest.approx([0.4, 0.25, 0.1, 0.02], abs=1e-6)
    assert result.convergence == pytest.approx(1.0)
    assert result.tokens == 6 and result.sequences == 2


def test_non_monotone_movement_hand_computed():
    moves = [0.3, 0.1, 0.2, 0.05]
    states, angles = _rotating_states(moves)
    meter = StreamMeter(num_states=5)
    meter.add(states)
    meter.add(states)  # accumulating twice changes no mean
    result = meter.result()
    assert result.movement == pytest.approx(moves, abs=1e-6)
    # steps -0.2, +0.1, -0.15: C = 1 - 0.1 / 0.45
    assert result.convergence == pytest.approx(1 - 0.1 / 0.45, abs=1e-6)
    assert result.block_influence == pytest.approx([2 * d for d in moves], abs=1e-6)
    for n, row in enumerate(result.angular_distance, start=1):
        for l, value in enumerate(row):
            turn = angles[l + n] - angles[l]
            assert value == pytest.approx(min(turn, 2 * math.pi - turn) / math.pi, abs=1e-5)
    assert [len(row) for row in result.angular_distance] == [4, 3, 2, 1]


def test_convergence_edge_cases_and_helpers():
    assert convergence([0.2, 0.2, 0.2]) == 1.0  # flat: nothing increases
    assert convergence([0.1, 0.2, 0.3]) == 0.0
    assert movement([1.0, -1.0, 0.0]) == [0.0, 1.0, 0.5]
    assert blocks_from_pairs([[0, 1, 2], [1, 0, 3], [2, 3, 0]]) == [[1, 3], [2]]


def test_pca_of_a_planar_trajectory_explains_everything():
    states, _ = _rotating_states([0.3, 0.1, 0.2, 0.05])
    view = pca_trajectories(states[:, :, -1].transpose(0, 1))  # [b, L + 1, h]
    assert sum(view.explained) == pytest.approx(1.0)
    assert len(view.coords) == 2 and len(view.coords[0]) == 5 and len(view.coords[0][0]) == 2


# ---- task files ---------------------------------------------------------------------------


def test_task_files_json_lines_arrays_and_missing_fields(tmp_path):
    from grow_cli.errors import GrowError
    from grow_cli.evaluation.tasks import TASKS, find_task_file, write_task_yaml

    row = {"goal": "g", "sol1": "a", "sol2": "b", "label": 0}
    spec = TASKS["piqa"]
    (tmp_path / "piqa.json").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")  # datasets' to_json: lines
    assert find_task_file(spec, tmp_path).name == "piqa.json"
    (tmp_path / "piqa.json").write_text(json.dumps([row, row], indent=1))  # a JSON array
    assert find_task_file(spec, tmp_path).name == "piqa.json"
    (tmp_path / "piqa.json").write_text(json.dumps({k: v for k, v in row.items() if k != "sol2"}))
    with pytest.raises(GrowError, match="lacks field"):
        find_task_file(spec, tmp_path)
    with pytest.raises(GrowError, match="no data for task hellaswag"):
        find_task_file(TASKS["hellaswag"], tmp_path)
    import yaml

    config = yaml.safe_load(write_task_yaml(spec, tmp_path / "piqa.json", tmp_path).read_text())
    assert config["include"].endswith("lm_eval/tasks/piqa/piqa.yaml") and Path(config["include"]).is_file()
    assert config["dataset_path"] == "json" and config["dataset_kwargs"] == {"data_files": {"validation": str(tmp_path / "piqa.json")}}
    assert (config["validation_split"], config["test_split"], config["training_split"]) == ("validation", None, None)
