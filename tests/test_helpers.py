"""The small shared helpers: byte formatting, dtype names, the launcher's environment."""

from __future__ import annotations

import pytest
import torch

from grow_cli.dtypes import LONG_NAMES, WEIGHT_DTYPES, from_long_name, short_name, torch_dtype
from grow_cli.errors import GrowError
from grow_cli.runtime import env
from grow_cli.units import format_bytes


def test_format_bytes_uses_binary_units():
    assert format_bytes(300) == "300 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30 / 2) == "1.5 GiB"
    assert format_bytes(5e9) == f"{5e9 / 2**30:.3g} GiB"


def test_dtype_names_match_torch_and_transformers():
    for short, long in LONG_NAMES.items():
        assert torch_dtype(short) is getattr(torch, long) and short_name(getattr(torch, long)) == short
        assert from_long_name(str(getattr(torch, long)).removeprefix("torch.")) == short
    assert set(WEIGHT_DTYPES) <= set(LONG_NAMES) and short_name(torch.int8) is None
    with pytest.raises(GrowError, match="unknown dtype 'fp8'"):
        torch_dtype("fp8")


def test_rank_and_world_size_from_the_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (env.rank(), env.world_size(), env.local_rank(), env.is_main()) == (0, 1, 0, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (env.rank(), env.world_size(), env.is_main()) == (3, 4, False)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(GrowError, match="WORLD_SIZE='four' is not an integer"):
        env.world_size()
