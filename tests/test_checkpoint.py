"""The checkpoint core: partial reads, streaming writes, validation, atomic outputs, metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from grow_cli.checkpoint.atomic import atomic_directory, atomic_file, leftover_temporaries, write_json_atomic
from grow_cli.checkpoint.layout import merge_qkv, split_qkv
from grow_cli.checkpoint.metadata import CheckpointInfo, DistillDetails, ExpandDetails, LineageStep, read_info
from grow_cli.checkpoint.tensors import CheckpointReader, layer_piece, whole, write_checkpoint
from grow_cli.errors import GrowError
from grow_cli.shape import ModelShape

from conftest import run_ranks

SCRIPT = Path(__file__).parent / "scripts" / "checkpoint_roundtrip.py"


def _reference_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        "embedding.word_embeddings.weight": torch.randn(10, 4, generator=generator),
        "decoder.layers.mlp.linear_fc2.weight": torch.randn(3, 4, 6, generator=generator),
        "decoder.final_layernorm.weight": torch.randn(4, generator=generator),
    }


def _write(path: Path, tensors: dict[str, torch.Tensor], info: CheckpointInfo | None = None) -> list[str]:
    pieces, produced = [], []
    for key, tensor in tensors.items():
        if key.startswith("decoder.layers."):
            pieces += [layer_piece(key, tuple(tensor.shape), layer, tensor.dtype) for layer in range(tensor.shape[0])]
        else:
            pieces.append(whole(key, tuple(tensor.shape), tensor.dtype))

    def produce(piece):
        produced.append(f"{piece.key}@{piece.offsets[0]}")
        index = tuple(slice(o, o + s) for o, s in zip(piece.offsets, piece.sizes))
        return tensors[piece.key][index].clone()

    common = {"grow": info.to_dict()} if info else {}
    write_checkpoint(path, pieces, produce, common=common, objects={"x._extra_state/shard_0_1": None})
    return produced


def test_streaming_write_then_partial_reads(tmp_path):
    tensors = _reference_tensors()
    produced = _write(tmp_path, tensors)
    # one producer call per layer of the stacked tensor: the writer never asked for it whole
    assert sorted(produced).count("decoder.layers.mlp.linear_fc2.weight@1") == 1
    assert len(produced) == 2 + 3
    reader = CheckpointReader(tmp_path)
    assert set(reader.tensor_keys()) == set(tensors)
    assert reader.object_keys() == ["x._extra_state/shard_0_1"]
    for key, tensor in tensors.items():
        assert torch.equal(reader.read(key), tensor)
    stacked = tensors["decoder.layers.mlp.linear_fc2.weight"]
    assert torch.equal(reader.read_layer("decoder.layers.mlp.linear_fc2.weight", 2), stacked[2])
    block = reader.read("decoder.layers.mlp.linear_fc2.weight", (1, 1, 2), (2, 2, 3))
    assert torch.equal(block, stacked[1:3, 1:3, 2:5])
    assert torch.equal(reader.read_rows("embedding.word_embeddings.weight", 3, 4), tensors["embedding.word_embeddings.weight"][3:7])
    # a one-layer read touches one stored chunk (a third of the stacked tensor's bytes)
    total = reader.stored_bytes("decoder.layers.mlp.linear_fc2.weight")
    assert reader.stored_bytes("decoder.layers.mlp.linear_fc2.weight", (1, 0, 0), (1, 4, 6)) * 3 == total


def test_metadata_roundtrip_and_lineage(tmp_path, tiny_shape):
    info = CheckpointInfo(shape=tiny_shape, iteration=5, stage="2M", lineage=(LineageStep("pretrain"),))
    _write(tmp_path, _reference_tensors(), info)
    loaded = read_info(tmp_path)
    assert loaded == info
    child = loaded.derive(LineageStep("expand", source=str(tmp_path), source_id=info.checkpoint_id), iteration=0)
    assert child.checkpoint_id != info.checkpoint_id
    assert [s.op for s in child.lineage] == ["pretrain", "expand"]
    assert child.lineage[-1].source_id == info.checkpoint_id


def test_invalid_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(GrowError, match="does not exist"):
        CheckpointReader(tmp_path / "nope")
    with pytest.raises(GrowError, match="no metadata.json"):
        CheckpointReader(tmp_path)
    good = tmp_path / "good"
    good.mkdir()
    _write(good, _reference_tensors())
    shard = next(good.glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(GrowError, match="truncated"):
        CheckpointReader(good)
    shard.unlink()
    with pytest.raises(GrowError, match="missing shard files"):
        CheckpointReader(good)
    with pytest.raises(GrowError, match="without grow metadata"):
        read_info(good)


def test_atomic_directory_keeps_nothing_on_failure_and_refuses_overwrite(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("killed")
    assert not out.exists() and not leftover_temporaries(out)
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("first")
    with pytest.raises(GrowError, match="--force"):
        with atomic_directory(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(out, force=True) as tmp:
            raise RuntimeError("killed while replacing")
    assert (out / "a").read_text() == "first"  # the old output survives a failed replacement
    with atomic_directory(out, force=True) as tmp:
        (tmp / "b").write_text("second")
    assert sorted(os.listdir(out)) == ["b"]


def test_atomic_file_replaces_whole_or_not_at_all_with_a_temporary_per_writer(tmp_path):
    final = tmp_path / "run.json"
    write_json_atomic(final, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(final.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["run.json"]
    with atomic_file(final) as first, atomic_file(final, mode=0o755) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("first")
        second.write_text("second")
    assert final.read_text() == "first" and os.listdir(tmp_path) == ["run.json"]  # the outer block ends last
    assert final.stat().st_mode & 0o777 != 0o755


def test_lineage_reads_old_records_and_round_trips_typed_details(tiny_shape):
    old = {"op": "expand", "source": "runs/1B", "source_id": "abc", "details": {"source_iteration": 30, "width": "aki"}}
    step = LineageStep.from_dict(old)
    assert step.details == ExpandDetails(width="aki", source_iteration=30)
    full = LineageStep("expand", details=ExpandDetails(width="iso", source_shape=tiny_shape, exact=True))
    data = json.loads(json.dumps(full.to_dict()))
    assert data["details"]["source_shape"] == tiny_shape.to_dict() and LineageStep.from_dict(data) == full
    assert LineageStep("pretrain").details.train_iters is None
    with pytest.raises(GrowError, match="newer grow"):
        LineageStep.from_dict({"op": "prune"})  # an op this grow does not know ("distill" now exists)
    details = DistillDetails(lam=1.0, gamma=0.25, direction="reverse")
    distilled = LineageStep("distill", source="runs/1B", source_id="abc", details=details)
    assert LineageStep.from_dict(json.loads(json.dumps(distilled.to_dict()))) == distilled


def test_qkv_split_merge_follows_group_interleaving():
    shape = ModelShape(hidden=8, ffn=16, layers=1, heads=4, kv_groups=2, head_dim=2)
    # rows labelled by (group, slot): group g holds [q(2 heads); k; v], each head 2 rows
    rows = torch.arange((4 + 2 * 2) * 2, dtype=torch.float32).unsqueeze(1).expand(-1, 8)
    q, k, v = split_qkv(rows, shape)
    assert q[:, 0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert k[:, 0].tolist() == [4, 5, 12, 13]
    assert v[:, 0].tolist() == [6, 7, 14, 15]
    assert torch.equal(merge_qkv(q, k, v, shape), rows)


@pytest.mark.slow
def test_megatron_tp2_checkpoint_rewritten_by_stream_loads_at_tp1(tmp_path):
    """megatron saves at TP=2; we copy it tensor by tensor with our writer; megatron loads it at TP=1."""
    source, copy = tmp_path / "source", tmp_path / "copy"
    run_ranks([str(SCRIPT), "save", str(source), "2", str(tmp_path / "saved.pt")])
    reader = CheckpointReader(source)
    from grow_cli.checkpoint.layout import extra_state_objects, tensor_specs
    from scripts.checkpoint_roundtrip import SHAPE

    assert sorted(reader.object_keys()) == sorted(extra_state_objects(SHAPE))
    assert {s.key: s.shape for s in tensor_specs(SHAPE, SHAPE.padded_vocab(1))} == {
        k: reader.shape(k) for k in reader.tensor_keys()
    }
    copy.mkdir()
    pieces = [whole(k, reader.shape(k), reader.dtype(k)) for k in reader.tensor_keys()]
    from grow_cli.checkpoint.metadata import read_common

    write_checkpoint(
        copy,
        pieces,
        lambda p: reader.read(p.key),
        common=read_common(source),
        objects=extra_state_objects(SHAPE),
    )
    run_ranks([str(SCRIPT), "load", str(copy), "1", str(tmp_path / "loaded.pt")], nproc=1)
    saved, loaded = torch.load(tmp_path / "saved.pt"), torch.load(tmp_path / "loaded.pt")
    assert saved.abs().max() > 0.1
    assert torch.allclose(saved, loaded, atol=1e-5 * saved.abs().max().item(), rtol=0)
