"""`grow distill` (spec §2): the loss against a hand computation, the reproduction in miniature
(C_model rises, the final layer moves less, validation loss holds), exact resume, TP=2 = TP=1,
lineage, and bad inputs.

References: the loss is recomputed from megatron-core's own modules called one by one (embedding,
each TransformerLayer, final norm, output layer), full [tokens, vocab] log-softmaxes and the
spec's formulas written out; the before/after numbers are `grow eval`'s own output; resume and
TP are compared with the same run uninterrupted and at TP=1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import prepare_three_plays, run_grow

SCRIPTS = Path(__file__).parent / "scripts"


# ---- the loss, by hand -----------------------------------------------------------------------
def _states_by_hand(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Embedding output and every layer's output [s, b, h], calling megatron's modules directly."""
    positions = torch.arange(tokens.size(1)).unsqueeze(0).expand_as(tokens)
    hidden = model.embedding(input_ids=tokens, position_ids=positions)
    rope = model.rotary_pos_emb(tokens.size(1))
    states = [hidden]
    for layer in model.decoder.layers:
        hidden, _ = layer(hidden_states=hidden, attention_mask=None, rotary_pos_emb=rope)
        states.append(hidden)
    return states


def _reference_terms(student, teacher, tokens, mask, lam: float, gamma: float, direction: str) -> dict[str, torch.Tensor]:
    states = _states_by_hand(student, tokens)
    layers = len(states) - 1
    weights = [math.exp(gamma * l) for l in range(layers)]
    weights = [w / sum(weights) for w in weights]
    positions = torch.arange(tokens.size(1)).unsqueeze(0).expand_as(tokens)
    teacher_logp = torch.log_softmax(teacher(tokens, positions, None).transpose(0, 1).float(), dim=-1)  # [s, b, V]
    head = student.output_layer.weight
    kls = []
    for layer in range(layers):
        logp = torch.log_softmax(student.decoder.final_layernorm(states[layer + 1]) @ head.T, dim=-1)
        if direction == "reverse":
            kls.append((logp.exp() * (logp - teacher_logp)).sum(-1))
        else:
            kls.append((teacher_logp.exp() * (teacher_logp - logp)).sum(-1))
    lens = sum(w * kl for w, kl in zip(weights, kls))
    movement = sum(
        weights[l] * (states[l + 1] - states[l]).pow(2).sum(-1) / states[l].pow(2).sum(-1) for l in range(1, layers)
    )
    mask = mask.t()  # [s, b], as megatron's states
    terms = {"lens kl": lens, "movement": movement, "final kl": kls[-1], "distill loss": lens + lam * movement}
    return {name: (value * mask).sum() for name, value in terms.items()}


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_loss_terms_equal_a_hand_computation(direction, megatron_runtime):
    from grow_cli.distill.config import DistillSettings
    from grow_cli.distill.objective import DistillObjective
    from grow_cli.layout import Layout
    from grow_cli.runtime.model import build_gpt_model
    from grow_cli.shape import ModelShape

    torch.manual_seed(0)
    shape = ModelShape(hidden=32, ffn=64, layers=3, heads=4, kv_groups=2, head_dim=8, vocab=300, seq_len=16)
    teacher = build_gpt_model(shape, Layout(1, 1, 1)).eval()
    student = build_gpt_model(shape, Layout(1, 1, 1))
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for param in student.parameters():
            param.add_(0.05 * torch.randn_like(param))
    tokens = torch.randint(0, shape.vocab, (2, 16))
    mask = torch.ones(2, 16)
    mask[1, 10:] = 0
    batch = {"tokens": tokens, "labels": tokens, "position_ids": torch.arange(16).expand(2, 16), "loss_mask": mask}
    lam, gamma = 0.7, 0.5
    objective = DistillObjective(SimpleNamespace(shape=shape), DistillSettings("", "", lam, gamma, direction))
    objective.teacher = teacher.requires_grad_(False)

    output, loss_fn = objective.forward_step(student, batch)
    loss, count, report = loss_fn(output)
    assert int(count) == 26
    loss.backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters()}
    student.zero_grad()

    expected = _reference_terms(student, teacher, tokens, mask, lam, gamma, direction)
    for name, value in expected.items():
        assert report[name][0].item() == pytest.approx(value.item(), rel=1e-5), name
        assert report[name][1].item() == 26
    assert loss.item() == pytest.approx(expected["distill loss"].item(), rel=1e-5)
    assert expected["lens kl"].item() > 0 and expected["movement"].item() > 0
    expected["distill loss"].backward()
    for name, param in student.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_depth_weights_are_the_spec_softmax():
    from grow_cli.distill.objective import depth_weights

    weights = depth_weights(5, 0.25)
    expected = [math.exp(0.25 * l) / sum(math.exp(0.25 * k) for k in range(5)) for l in range(5)]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert depth_weights(3, 0.0).tolist() == pytest.approx([1 / 3] * 3)


# ---- bad inputs that need no model -------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lambda", "-1"], "--lambda must be a finite number >= 0"),
        (["--gamma", "-0.5"], "--gamma must be a finite number >= 0"),
        (["--gamma", "nan"], "--gamma must be a finite number >= 0"),
        (["--kl", "sideways"], "--kl 'sideways': choose one of reverse, forward"),
        (["--pp", "2"], "grow distill runs at --pp 1"),
        (["--recompute", "full"], "cannot use --recompute full"),
        (["--report-tokens", "0"], "--report-tokens must be at least 1"),
    ],
)
def test_bad_flags_are_one_line_exit_2(extra, message, tmp_path):
    out = tmp_path / "out"
    proc = run_grow(["distill", str(tmp_path / "ckpt"), "--data", str(tmp_path / "data"), "--out", str(out), *extra])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not out.exists()


def test_model_flags_are_not_on_the_command_line():
    from typer.testing import CliRunner

    from grow_cli.app import app

    result = CliRunner().invoke(app, ["distill", "ckpt", "--data", "d", "--out", "o", "--size", "2M"])
    assert result.exit_code == 2 and "No such option: --size" in result.output


# ---- the reproduction in miniature (shared runs) -----------------------------------------------
TINY = ["--hidden", "64", "--ffn", "176", "--layers", "4", "--heads", "4", "--kv-groups", "2", "--seq-len", "64"]
DISTILL = ["--iters", "10", "--global-batch", "8", "--micro-batch", "4", "--lr", "1e-3", "--warmup-iters", "0",
           "--log-interval", "1", "--eval-interval", "5", "--eval-iters", "1", "--save-interval", "5",
           "--report-tokens", "4096", "--quiet", "--json"]


def _ok(proc):
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _distill(checkpoint: Path, data: str, out: Path, *extra: str, nproc: int = 1) -> dict | None:
    proc = _ok(run_grow(["distill", str(checkpoint), "--data", data, "--out", str(out), *DISTILL, *extra], nproc=nproc))
    text = proc.stdout
    return json.loads(text[text.index("{"):]) if "{" in text else None


def _losses(out: Path, kind: str = "train") -> dict[int, dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["iteration"]: r["losses"] for r in map(json.loads, lines) if r["kind"] == kind}


@pytest.fixture(scope="module")
def miniature(tmp_path_factory) -> dict:
    """A 512-token BPE, three plays, a 4-layer model pretrained 60 steps, and a copy of it whose last
    layer moves the stream 4x as far (C_model < 1, the profile spec §2 repairs)."""
    work = tmp_path_factory.mktemp("distill")
    _ok(run_grow(["data", "tokenizer", "-i", "shakespeare", "--vocab-size", "512", "--out", str(work / "bpe")]))
    data = prepare_three_plays(work / "shk", "--tokenizer", str(work / "bpe"))
    _ok(run_grow(["pretrain", *TINY, "--iters", "60", "--global-batch", "8", "--micro-batch", "8", "--lr", "3e-3",
                  "--warmup-iters", "2", "--eval-iters", "1", "--quiet", "--data", data, "--out", str(work / "pre")]))
    import subprocess
    import sys

    kinked = work / "kinked"
    subprocess.run([sys.executable, str(SCRIPTS / "distill_kink.py"), str(work / "pre"), str(kinked), "4"], check=True,
                   capture_output=True)
    full = _distill(kinked, data, work / "full")
    interrupted = work / "interrupted"
    _distill(kinked, data, interrupted, "--exit-interval", "5")
    resumed = _distill(kinked, data, interrupted)
    tp2 = _distill(kinked, data, work / "tp2", "--tp", "2", nproc=2)
    return {"work": work, "data": data, "kinked": kinked, "full": full, "resumed": resumed, "tp2": tp2}


@pytest.mark.slow
def test_distillation_raises_convergence_and_keeps_the_loss(miniature):
    before, after = miniature["full"]["report"]["before"], miniature["full"]["report"]["after"]
    assert before["convergence"] < 0.8  # the kinked profile
    assert after["convergence"] > before["convergence"] + 0.2
    assert after["final_movement"] < 0.5 * before["final_movement"]
    assert abs(after["valid_loss"] - before["valid_loss"]) < 0.1  # the tolerance docs/distill.md states
    assert len(after["movement"]) == 4 and len(after["lens_loss"]) == 5
    assert all(Path(p).is_file() for p in miniature["full"]["report"]["plots"])


@pytest.mark.slow
def test_before_numbers_are_grow_evals(miniature):
    proc = _ok(run_grow(["eval", str(miniature["kinked"]), "--data", miniature["data"], "--max-tokens", "4096",
                         "--diag-tokens", "4096", "--json"]))
    record = json.loads(proc.stdout[proc.stdout.index("{"):])  # one checkpoint: its record
    before = miniature["full"]["report"]["before"]
    assert before["convergence"] == pytest.approx(record["convergence"], rel=1e-9)
    assert before["movement"] == pytest.approx(record["movement"], rel=1e-9)
    assert before["valid_loss"] == pytest.approx(record["loss"], rel=1e-9)
    assert before["lens_loss"] == pytest.approx([row["loss"] for row in record["lens"]], rel=1e-9)


@pytest.mark.slow
def test_resume_after_a_stop_equals_the_uninterrupted_run(miniature):
    work = miniature["work"]
    assert _losses(work / "interrupted") == _losses(work / "full")  # every term, every step, bit for bit
    assert miniature["resumed"]["report"]["after"] == {**miniature["full"]["report"]["after"],
                                                       "checkpoint": str(work / "interrupted" / "iter_0000010")}


@pytest.mark.slow
def test_tp2_equals_tp1(miniature):
    work = miniature["work"]
    tp1, tp2 = _losses(work / "full"), _losses(work / "tp2")
    assert sorted(tp1) == sorted(tp2) == list(range(1, 11))
    for step in tp1:
        for name, value in tp1[step].items():
            assert tp2[step][name] == pytest.approx(value, rel=2e-4, abs=1e-6), (step, name)
    one, two = miniature["full"]["report"]["after"], miniature["tp2"]["report"]["after"]
    assert two["convergence"] == pytest.approx(one["convergence"], abs=1e-3)
    assert two["valid_loss"] == pytest.approx(one["valid_loss"], rel=1e-4)


@pytest.mark.slow
def test_lineage_names_the_teacher(miniature):
    from grow_cli.checkpoint.metadata import read_info

    teacher = read_info(miniature["kinked"])
    info = read_info(miniature["work"] / "full" / "iter_0000010")
    step = info.lineage[-1]
    assert step.op == "distill" and step.source == str(miniature["kinked"]) and step.source_id == teacher.checkpoint_id
    assert (step.details.lam, step.details.gamma, step.details.direction) == (1.0, 0.25, "reverse")
    assert info.lineage[:-1] == teacher.lineage and info.shape == teacher.shape


@pytest.mark.slow
def test_resuming_with_another_loss_is_refused(miniature):
    run = miniature["work"] / "full"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    proc = run_grow(["distill", str(miniature["kinked"]), "--data", miniature["data"], "--out", str(run), *DISTILL, "--lambda", "0.5"])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "objective=" in lines[0] and "'lambda': 1.0" in lines[0] and "'lambda': 0.5" in lines[0], lines[0]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        ("no data", "no prepared data"),
        ("not a checkpoint", "CKPTERR"),
        ("vocabulary", "tokenizer"),
    ],
)
def test_bad_inputs_with_a_model_are_one_line_exit_2(case, message, miniature, tmp_path):
    checkpoint, data = str(miniature["kinked"]), miniature["data"]
    if case == "no data":
        data = str(tmp_path / "missing")
    if case == "not a checkpoint":
        (tmp_path / "empty").mkdir()
        checkpoint = str(tmp_path / "empty")
    if case == "vocabulary":
        data = str(tmp_path / "gpt2")
        _ok(run_grow(["data", "prepare", "--input", "shakespeare", "--out", data, "--max-documents", "2", "--workers", "1"]))
    out = tmp_path / "out"
    proc = run_grow(["distill", checkpoint, "--data", data, "--out", str(out), "--iters", "1"])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert message == "CKPTERR" or message in lines[0], lines[0]
    assert not out.exists()
