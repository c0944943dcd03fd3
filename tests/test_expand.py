"""grow expand: maps, operators against an independent reference, exactness in megatron-core,
layout independence (TP/PP of source and target, number of ranks), bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from grow_cli.checkpoint.metadata import read_info
from grow_cli.checkpoint.rundir import resolve_checkpoint
from grow_cli.checkpoint.tensors import CheckpointReader
from grow_cli.errors import GrowError
from grow_cli.expansion.cli import DEFAULT_VERIFY_TOKENS
from grow_cli.expansion.depth import depth_map
from grow_cli.expansion.engine import expand_checkpoint
from grow_cli.expansion.gqa import head_maps
from grow_cli.expansion.recipe import ExpandOptions, ExpansionRecipe
from grow_cli.growth_rules import check_growth, gqa_growable
from grow_cli.expansion.maps import generator_for, grow_map
from grow_cli.shape import ModelShape

from conftest import run_grow, run_ranks

SCRIPT = Path(__file__).parent / "scripts" / "expand_models.py"

BASE = ModelShape(hidden=64, ffn=176, layers=3, heads=4, kv_groups=4, head_dim=16, vocab=1000, seq_len=32)
SOURCES = {
    "mha": BASE,
    "mha_tied": BASE.with_(tied_embeddings=True),
    "gqa": BASE.with_(kv_groups=2),
    "gqa_tied": BASE.with_(kv_groups=2, tied_embeddings=True),
    "gqa9": BASE.with_(heads=9, kv_groups=3, layers=2),
    "gqa_even": BASE.with_(kv_groups=2, layers=2),  # re-savable at PP=2
    "wide_vocab": BASE.with_(vocab=50257, layers=2, seq_len=64),
}
GROWN = {"hidden": 80, "ffn": 224, "layers": 4}


def target_of(name: str) -> ModelShape:
    heads = {"heads": 5, "kv_groups": 5} if name.startswith("mha") else {"heads": 6, "kv_groups": 3}
    return SOURCES[name].with_(**GROWN, **heads)


def run_models(jobs: list[dict], tmp: Path, tp: int = 1, pp: int = 1) -> None:
    spec = tmp / f"jobs-{tp}-{pp}-{len(list(tmp.glob('jobs-*')))}.json"
    spec.write_text(json.dumps({"tp": tp, "pp": pp, "jobs": jobs}))
    if tp * pp == 1:
        import subprocess

        proc = subprocess.run([sys.executable, str(SCRIPT), str(spec)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-6000:]
    else:
        run_ranks([str(SCRIPT), str(spec)], nproc=tp * pp)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Source checkpoints saved by megatron-core (TP=1), with random norm gains."""
    tmp = tmp_path_factory.mktemp("expand")
    run_models(
        [{"op": "make", "shape": s.to_dict(), "seed": i, "out": str(tmp / name)} for i, (name, s) in enumerate(SOURCES.items())],
        tmp,
    )
    return tmp


def tensors(path: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(path)
    return {key: reader.read(key) for key in reader.tensor_keys()}


def snapshot(path: Path) -> dict[str, tuple[str, int]]:
    return {
        str(f.relative_to(path)): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


# ---- maps ------------------------------------------------------------------------------------
def test_index_maps_keep_old_units_and_follow_the_seed():
    a = grow_map(5, 9, generator_for(3, "hidden"))
    assert a.index[:5] == (0, 1, 2, 3, 4) and all(0 <= k < 5 for k in a.index)
    assert int(a.counts.sum()) == 9 and a.new.tolist() == [False] * 5 + [True] * 4
    assert a == grow_map(5, 9, generator_for(3, "hidden"))
    assert {grow_map(64, 80, generator_for(s, "hidden")).index for s in range(4)}.__len__() == 4


def test_depth_maps():
    stack = depth_map("stack", 18, 22)
    assert stack.source == tuple(range(18)) + (14, 15, 16, 17) and not any(stack.zero_output)
    assert depth_map("stack", 3, 8).source == (0, 1, 2, 0, 1, 2, 1, 2)
    identity = depth_map("identity", 3, 4)
    assert identity.source == (0, 1, 2, 2) and identity.zero_output == (False, False, False, True)
    assert depth_map("identity", 2, 4).zero_output == (False, True, False, True)


def test_gqa_feasibility_rule_and_alternative():
    src = ModelShape(hidden=3200, ffn=11200, layers=27, heads=25, kv_groups=5, head_dim=128)
    assert not gqa_growable(src, heads=32, kv_groups=8)  # needs 10 groups
    assert gqa_growable(src, heads=32, kv_groups=16)
    with pytest.raises(GrowError, match=r"10 KV groups.*--kv-groups 16 \(32 heads\) or --heads 40"):
        check_growth(src, src.with_(heads=32, kv_groups=8))
    # every target head sits in a KV group copied from its source head's group
    for s, t in [((4, 2), (6, 3)), ((8, 2), (12, 6)), ((4, 4), (8, 4)), ((6, 2), (10, 5)), ((16, 16), (20, 20))]:
        source = ModelShape(hidden=64, ffn=64, layers=1, heads=s[0], kv_groups=s[1], head_dim=8)
        target = source.with_(heads=t[0], kv_groups=t[1])
        maps = head_maps(source, target, generator_for(0, "heads"))
        r, r_t = s[0] // s[1], t[0] // t[1]
        for j, head in enumerate(maps.query.index):
            assert maps.groups.index[j // r_t] == head // r
        assert set(maps.query.index) == set(range(s[0]))
        if r == r_t:
            assert maps.query.index[: s[0]] == tuple(range(s[0]))


# ---- operators against an independent reference ---------------------------------------------
def reference_expansion(src: dict[str, torch.Tensor], s: ModelShape, t: ModelShape, plan: ExpansionRecipe, method: str):
    """bert2BERT FPI/AKI written out element by element from the maps (stack depth 3 -> 4)."""
    g, gf = plan.maps.hidden.index, plan.maps.ffn.index
    gq, gk = plan.maps.heads.query.index, plan.maps.heads.groups.index
    C = torch.bincount(torch.tensor(g)).double()
    Cf = torch.bincount(torch.tensor(gf)).double()
    Cq = torch.bincount(torch.tensor(gq)).double()
    d, r_s, r_t = s.head_dim, s.heads // s.kv_groups, t.heads // t.kv_groups
    first = lambda m, i: m.index(m[i]) == i  # noqa: E731
    cols = torch.tensor(g)
    depth = [0, 1, 2, 2]

    def layer_for(k: int, new: bool) -> int:
        return k + 1 if method == "aki" and new and k + 1 < s.layers else k

    out = {}
    E = src["embedding.word_embeddings.weight"].double()
    out["embedding.word_embeddings.weight"] = E[:, cols]
    final = src["decoder.final_layernorm.weight"].double()[cols]
    out["decoder.final_layernorm.weight"] = final / C[cols] if s.tied_embeddings else final
    if not s.tied_embeddings:
        out["output_layer.weight"] = src["output_layer.weight"].double()[:, cols] / C[cols]
    qkv, proj, fc1, fc2, n1, n2 = ([] for _ in range(6))
    for k in depth:
        W = src["decoder.layers.self_attention.linear_qkv.weight"].double()
        rows = []
        for row in range((t.heads + 2 * t.kv_groups) * d):
            b, within = divmod(row, (r_t + 2) * d)
            slot, e = divmod(within, d)
            if slot < r_t:
                j = b * r_t + slot
                head = gq[j]
                src_row = (head // r_s) * (r_s + 2) * d + (head % r_s) * d + e
                new = not first(gq, j)
            else:
                c = gk[b]
                src_row = c * (r_s + 2) * d + (r_s + (slot - r_t)) * d + e
                new = not first(gk, b)
            rows.append(W[layer_for(k, new), src_row, cols] / C[cols])
        qkv.append(torch.stack(rows))
        P = src["decoder.layers.self_attention.linear_proj.weight"].double()
        pc = torch.tensor([gq[c // d] * d + c % d for c in range(t.heads * d)])
        pscale = torch.tensor([Cq[gq[c // d]] for c in range(t.heads * d)])
        proj.append(torch.stack([P[layer_for(k, i >= s.hidden), g[i], pc] / pscale for i in range(t.hidden)]))
        F1 = src["decoder.layers.mlp.linear_fc1.weight"].double()
        rows = []
        for row in range(2 * t.ffn):
            unit = row % t.ffn
            src_row = gf[unit] + (s.ffn if row >= t.ffn else 0)
            rows.append(F1[layer_for(k, unit >= s.ffn), src_row, cols] / C[cols])
        fc1.append(torch.stack(rows))
        F2 = src["decoder.layers.mlp.linear_fc2.weight"].double()
        fc2.append(torch.stack([F2[layer_for(k, i >= s.hidden), g[i], torch.tensor(gf)] / Cf[torch.tensor(gf)] for i in range(t.hidden)]))
        n1.append(src["decoder.layers.self_attention.linear_qkv.layer_norm_weight"].double()[k, cols])
        n2.append(src["decoder.layers.mlp.linear_fc1.layer_norm_weight"].double()[k, cols])
    out["decoder.layers.self_attention.linear_qkv.weight"] = torch.stack(qkv)
    out["decoder.layers.self_attention.linear_proj.weight"] = torch.stack(proj)
    out["decoder.layers.mlp.linear_fc1.weight"] = torch.stack(fc1)
    out["decoder.layers.mlp.linear_fc2.weight"] = torch.stack(fc2)
    out["decoder.layers.self_attention.linear_qkv.layer_norm_weight"] = torch.stack(n1)
    out["decoder.layers.mlp.linear_fc1.layer_norm_weight"] = torch.stack(n2)
    return out


@pytest.mark.parametrize("method", ["fpi", "aki"])
@pytest.mark.parametrize("name", ["gqa", "mha_tied"])
def test_fpi_and_aki_match_reference(work, tmp_path, method, name):
    source, target = SOURCES[name], target_of(name)
    result = expand_checkpoint(work / name, tmp_path / "out", target, ExpandOptions(width=method, depth="stack", seed=5))
    got, src = tensors(tmp_path / "out"), tensors(work / name)
    plan = ExpansionRecipe.for_checkpoint(CheckpointReader(work / name), source, target, ExpandOptions(width=method, seed=5))
    want = reference_expansion(src, source, target, plan, method)
    assert set(got) == set(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        torch.testing.assert_close(got[key].double(), want[key], rtol=1e-6, atol=1e-7, msg=key)
    assert result.bytes_written == sum(v.numel() * v.element_size() for v in got.values())
    # spot values: a new FFN unit u of target layer 0 reads source layer 1 (AKI) or 0 (FPI) ...
    u = source.ffn + 3
    fc1 = "decoder.layers.mlp.linear_fc1.weight"
    gf = plan.maps.ffn.index[u]
    expected_layer = 1 if method == "aki" else 0
    assert torch.allclose(got[fc1][0, u, : source.hidden], src[fc1][expected_layer, gf] / plan.maps.hidden.counts[: source.hidden])
    # ... and the top layer (source layer 2, copied as target layers 2 and 3) is FPI in both
    assert torch.allclose(got[fc1][3, u, : source.hidden], src[fc1][2, gf] / plan.maps.hidden.counts[: source.hidden])
    if method == "aki":
        assert not torch.allclose(got[fc1][0, u], got[fc1][0, gf])


# ---- exactness in megatron-core --------------------------------------------------------------
def test_iso_identity_is_exact_in_megatron(work, tmp_path):
    """Logits of iso+identity expansions equal the source's (MHA/GQA, tied/untied, noise or not)."""
    cases = {name: {} for name in ("mha", "mha_tied", "gqa", "gqa_tied")}
    cases["gqa_noise"] = {"noise": 0.05}
    jobs = []
    for case, extra in cases.items():
        name = case.removesuffix("_noise")
        expand_checkpoint(work / name, tmp_path / case, target_of(name), ExpandOptions(width="iso", depth="identity", seed=2, **extra))
        jobs += [
            {"op": "logits", "ckpt": str(work / name), "out": str(tmp_path / f"{case}.src.pt")},
            {"op": "logits", "ckpt": str(tmp_path / case), "out": str(tmp_path / f"{case}.dst.pt")},
        ]
    # a non-exact expansion, to show the comparison can fail
    expand_checkpoint(work / "gqa", tmp_path / "aki", target_of("gqa"), ExpandOptions(seed=2))
    jobs.append({"op": "logits", "ckpt": str(tmp_path / "aki"), "out": str(tmp_path / "aki.dst.pt")})
    run_models(jobs, tmp_path)
    for case in cases:
        before, after = torch.load(tmp_path / f"{case}.src.pt"), torch.load(tmp_path / f"{case}.dst.pt")
        assert (after - before).abs().max() <= 1e-4 * before.abs().max(), case
    before = torch.load(tmp_path / "gqa.src.pt")
    assert (torch.load(tmp_path / "aki.dst.pt") - before).abs().max() > 1e-2 * before.abs().max()
    # tied stays tied; iso scaled the norm epsilon; noise changed the weights but not the function
    assert "output_layer.weight" not in CheckpointReader(tmp_path / "mha_tied").tensor_keys()
    info = read_info(tmp_path / "gqa")
    assert info.shape.norm_eps == pytest.approx(BASE.norm_eps * 64 / 80)
    qkv = "decoder.layers.self_attention.linear_qkv.weight"
    plain, noisy = tensors(tmp_path / "gqa")[qkv], tensors(tmp_path / "gqa_noise")[qkv]
    assert (plain - noisy).abs().max() > 1e-4


def test_lineage_objects_and_dry_run(work, tmp_path):
    out = tmp_path / "out"
    args = ["--hidden", "80", "--heads", "6", "--kv-groups", "3", "--layers", "6", "--seed", "9"]  # 0,1,2,0,1,2: re-reads
    dry = run_grow(["expand", str(work / "gqa"), *args, "--dry-run", "--json", "--out", str(out)])
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert not out.exists()
    assert {t["key"] for t in plan["tensors"]} == set(CheckpointReader(work / "gqa").tensor_keys())
    qkv = next(t for t in plan["tensors"] if t["key"].endswith("linear_qkv.weight"))
    assert qkv["source_shape"] == [3, 128, 64] and qkv["shape"] == [6, 192, 80] and "AKI" in qkv["operator"]
    target = SOURCES["gqa"].with_(hidden=80, heads=6, kv_groups=3, layers=6)
    result = expand_checkpoint(work / "gqa", out, target, ExpandOptions(seed=9), stage="x")
    assert plan["bytes_written"] == result.bytes_written
    source = CheckpointReader(work / "gqa")
    assert plan["bytes_read"] == result.bytes_read > sum(source.stored_bytes(k) for k in source.tensor_keys())
    info, source_info = read_info(out), read_info(work / "gqa")
    step = info.lineage[-1]
    assert info.iteration == 0 and info.stage == "x" and info.shape.hidden == 80
    assert step.op == "expand" and step.source_id == source_info.checkpoint_id and step.source == str(work / "gqa")
    assert step.details.width == "aki" and step.details.seed == 9 and step.details.optimizer == "fresh"
    objects = CheckpointReader(out).object_keys()
    assert "decoder.layers.mlp.linear_fc2._extra_state/shard_5_6" in objects
    assert len(objects) == 4 * 6


def test_cli_verify_reports_exactness(work, tmp_path):
    out = tmp_path / "out"
    proc = run_grow(["expand", str(work / "wide_vocab"), "--hidden", "80", "--layers", "3", "--width", "iso",
                     "--depth", "identity", "--verify", "--json", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    check = summary["verify"]
    assert check["max_abs_dlogit"] <= 1e-4 * check["max_abs_logit"]
    assert check["loss_source"] == pytest.approx(check["loss_target"], abs=1e-5)
    assert check["delta_loss"] == pytest.approx(0.0, abs=1e-5) and check["delta_loss_stderr"] <= 1e-5
    assert check["tokens_requested"] == DEFAULT_VERIFY_TOKENS and check["sequences"] * check["seq_len"] == check["tokens"]
    assert (check["shortfall"] is None) == (check["tokens"] >= DEFAULT_VERIFY_TOKENS)
    if Path(__import__("os").environ["GROW_ASSETS"], ".installed").exists():
        assert "shipped corpus" in check["held_out"]
        assert 50_000 < check["tokens"] < 52_400 and "fewer than" in check["shortfall"]  # the shipped text holds 52,399 GPT-2 tokens
    assert summary["exact"] and any("optimizer state is not carried" in n for n in summary["notes"])


def write_random_checkpoint(path: Path, shape: ModelShape, stage: str | None = None) -> None:
    """A torch_dist checkpoint of `shape` with random weights, written without megatron."""
    from grow_cli.checkpoint.layout import extra_state_objects, tensor_specs
    from grow_cli.checkpoint.metadata import COMMON_KEY, CheckpointInfo
    from grow_cli.checkpoint.tensors import whole, write_checkpoint

    specs = {s.key: s.shape for s in tensor_specs(shape, shape.padded_vocab())}
    generator = torch.Generator().manual_seed(0)
    values = {key: torch.randn(size, generator=generator) * 0.02 for key, size in specs.items()}
    path.mkdir()
    write_checkpoint(path, [whole(k, v, torch.float32) for k, v in specs.items()], lambda p: values[p.key],
                     common={COMMON_KEY: CheckpointInfo(shape=shape, stage=stage).to_dict()}, objects=extra_state_objects(shape))


def test_target_from_plan_stage(tmp_path):
    from grow_cli.planning.planfile import load_plan

    plan_file = tmp_path / "plan.yaml"
    made = run_grow(["plan", "--sizes", "2M,4M", "--tokens-per-param", "20", "--seq-len", "64", "--global-batch", "8",
                     "--vocab", "1000", "--out", str(plan_file)])
    assert made.returncode == 0, made.stderr[-2000:]
    plan = load_plan(plan_file)
    first, second = plan.stages
    write_random_checkpoint(tmp_path / "src", first.shape, stage=first.name)
    proc = run_grow(["expand", str(tmp_path / "src"), "--plan", str(plan_file), "--json", "--out", str(tmp_path / "out")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = read_info(tmp_path / "out")
    grown = ("hidden", "ffn", "layers", "heads", "kv_groups", "head_dim", "vocab")
    assert [getattr(info.shape, f) for f in grown] == [getattr(second.shape, f) for f in grown]
    assert info.stage == second.name and info.lineage[-1].details.plan == str(plan_file)
    again = run_grow(["expand", str(tmp_path / "src"), "--plan", str(plan_file), "--stage", "1", "--out", str(tmp_path / "x")])
    assert again.returncode == 2 and "nothing to expand" in again.stderr


# ---- bad inputs ------------------------------------------------------------------------------
BAD = [
    (["--hidden", "48"], "smaller than the source"),
    (["--layers", "2"], "nothing to expand"),
    (["--to", "2B"], "head dim 128 differs"),
    (["--heads", "10", "--kv-groups", "5", "--layers", "3"], "cannot grow 9 heads / 3 KV groups"),
    (["--hidden", "80", "--width", "aki", "--noise", "0.1"], "--noise applies"),
]


def test_bad_inputs_fail_cleanly(work, tmp_path):
    source = work / "gqa9"
    before = snapshot(source)
    out = tmp_path / "out"

    def refused(args: list[str], fragment: str, out: Path = out) -> None:
        proc = run_grow(["expand", *args, "--out", str(out)])
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr[-2000:])
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and fragment in lines[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr

    for args, fragment in BAD:
        refused([str(source), *args], fragment)
        assert not out.exists()
    # not a checkpoint, missing shard, corrupted shard, output exists, output == source
    refused([str(tmp_path), "--hidden", "80"], "not a torch_dist checkpoint")
    damaged = tmp_path / "damaged"
    shutil.copytree(source, damaged)
    shard = sorted(damaged.glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    refused([str(damaged), "--hidden", "80"], "truncated")
    shard.unlink()
    refused([str(damaged), "--hidden", "80"], "missing shard files")
    out.mkdir()
    (out / "keep").write_text("mine")
    refused([str(source), "--hidden", "80"], "already exists")
    assert (out / "keep").read_text() == "mine"
    refused([str(source), "--hidden", "80", "--force"], "must not be the source", out=source)
    assert not list(tmp_path.glob(".*incomplete")) and not list(work.glob(".*incomplete"))
    assert snapshot(source) == before


# ---- layout independence (multi-process) -----------------------------------------------------
@pytest.mark.slow
def test_any_source_layout_any_rank_count_same_bytes_and_any_target_layout(work, tmp_path):
    """TP=2- and PP=2-saved sources expand to the same bytes; 2 ranks write the same bytes as 1;
    the expanded checkpoint gives the TP=1 logits at TP=2 and the TP=1 loss at PP=2."""
    name, grown = "gqa_even", dict(GROWN, heads=8, kv_groups=4)  # 4 KV groups: loadable at TP=2
    target = SOURCES[name].with_(**grown)
    options = ExpandOptions(width="aki", depth="stack", seed=4)
    reference = tmp_path / "ref"
    expand_checkpoint(work / name, reference, target, options)
    expanded_tied = tmp_path / "tied"
    expand_checkpoint(work / "gqa_tied", expanded_tied, SOURCES["gqa_tied"].with_(**grown), ExpandOptions(width="iso", depth="identity"))
    checks = [reference, expanded_tied]
    run_models(
        [{"op": "logits", "ckpt": str(c), "out": str(tmp_path / f"{c.name}.tp1.pt")} for c in checks]
        + [{"op": "loss", "ckpt": str(c), "out": str(tmp_path / f"{c.name}.tp1.json")} for c in checks],
        tmp_path,
    )
    run_models(
        [{"op": "resave", "src": str(work / name), "out": str(tmp_path / "src_tp2")}]
        + [{"op": "logits", "ckpt": str(c), "out": str(tmp_path / f"{c.name}.tp2.pt")} for c in checks],
        tmp_path, tp=2,
    )
    run_models(
        [{"op": "resave", "src": str(work / name), "out": str(tmp_path / "src_pp2")}]
        + [{"op": "loss", "ckpt": str(c), "out": str(tmp_path / f"{c.name}.pp2.json")} for c in checks],
        tmp_path, pp=2,
    )
    for c in checks:
        torch.testing.assert_close(torch.load(tmp_path / f"{c.name}.tp2.pt"), torch.load(tmp_path / f"{c.name}.tp1.pt"), rtol=1e-5, atol=1e-5)
        tp1 = json.loads((tmp_path / f"{c.name}.tp1.json").read_text())["loss"]
        assert json.loads((tmp_path / f"{c.name}.pp2.json").read_text())["loss"] == pytest.approx(tp1, rel=1e-5)
    want = tensors(reference)
    assert len(CheckpointReader(tmp_path / "src_tp2").metadata.state_dict_metadata["decoder.layers.self_attention.linear_qkv.weight"].chunks) == 2 * 2
    for layout in ("src_tp2", "src_pp2"):
        out = tmp_path / f"from_{layout}"
        expand_checkpoint(tmp_path / layout, out, target, options)
        got = tensors(out)
        assert all(torch.equal(got[k], want[k]) for k in want), layout
    two = run_grow(["expand", str(work / name), "--hidden", "80", "--ffn", "224", "--layers", "4", "--heads", "8",
                    "--kv-groups", "4", "--seed", "4", "--json", "--out", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-4000:]
    assert json.loads(two.stdout)["ranks"] == 2
    assert len(list(resolve_checkpoint(tmp_path / "two").glob("*.distcp"))) == 2  # OUT/release/, the checkpoint
    got = tensors(tmp_path / "two")
    assert all(torch.equal(got[k], want[k]) for k in want)
