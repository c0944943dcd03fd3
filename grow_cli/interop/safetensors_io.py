"""Hugging Face safetensors weight directories: written shard by shard, read tensor by tensor.

Writing: `safetensors.torch.save_file` takes a whole dict, so a shard is the unit held in memory.
Shards are planned up front from the tensor shapes (greedy, in model order, a new shard when the
next tensor would pass `max_bytes`, as transformers' `save_pretrained` does), so file names are
final from the start and peak memory is one shard plus the tensors being converted. One shard is
written as `model.safetensors`; several as `model-0000i-of-0000N.safetensors` plus
`model.safetensors.index.json`, transformers' layout.

Reading: `safe_open` memory-maps each file and copies out only the tensor (or rows) asked for.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from grow_cli.checkpoint.atomic import give_default_mode
from grow_cli.errors import GrowError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?)B?\s*$", re.IGNORECASE)
_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F64": torch.float64,
}


def parse_size(text: str) -> int:
    """"5GB" -> 5e9 bytes, "500MB", "2GiB" -> 2 * 1024**3 (transformers' `max_shard_size` units)."""
    match = _SIZE.match(str(text))
    if not match:
        raise GrowError(f"cannot read size {text!r}: write a number with a unit, e.g. 5GB, 500MB or 2GiB")
    scale = 1024 if match.group(3) else 1000
    power = " KMGT".index(match.group(2).upper() or " ")
    value = int(float(match.group(1)) * scale**power)
    if value <= 0:
        raise GrowError(f"size {text!r} must be positive")
    return value


@dataclass(frozen=True)
class Shard:
    file: str
    names: tuple[str, ...]
    nbytes: int


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[Shard]:
    """Group (name, bytes) in order into shards of at most `max_bytes` (a bigger tensor gets its own)."""
    groups: list[list[tuple[str, int]]] = [[]]
    for name, nbytes in sizes:
        current = groups[-1]
        if current and sum(b for _, b in current) + nbytes > max_bytes:
            groups.append([])
        groups[-1].append((name, nbytes))
    count = len(groups)
    return [
        Shard(
            SINGLE_FILE if count == 1 else f"model-{i + 1:05d}-of-{count:05d}.safetensors",
            tuple(name for name, _ in group),
            sum(b for _, b in group),
        )
        for i, group in enumerate(groups)
    ]


def write_shards(
    out_dir: Path,
    shards: list[Shard],
    tensors: Iterator[tuple[str, torch.Tensor]],
    on_tensor: Callable[[str, int], None] = lambda name, nbytes: None,
) -> None:
    """Write `tensors` (arriving in shard order) into the planned files, one shard in memory at a time."""
    from safetensors.torch import save_file

    for shard in shards:
        data = {}
        for expected in shard.names:
            name, tensor = next(tensors)
            if name != expected:
                raise RuntimeError(f"tensor stream out of order: got {name}, planned {expected}")
            data[name] = tensor
            on_tensor(name, tensor.nbytes)
        save_file(data, str(out_dir / shard.file), metadata={"format": "pt"})
        give_default_mode(out_dir / shard.file)
        del data
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in shards)},
            "weight_map": {name: s.file for s in shards for name in s.names},
        }
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))


class SafetensorsDir:
    """Lazy access to the weights of a transformers model directory (sharded or not)."""

    def __init__(self, path: Path):
        self.path = path
        self._stack = contextlib.ExitStack()
        files = self._files()
        self._handles = {}
        self._where: dict[str, str] = {}
        from safetensors import safe_open

        for file in files:
            try:
                handle = self._stack.enter_context(safe_open(str(path / file), framework="pt"))
            except Exception as error:  # a truncated or foreign file
                self.close()
                raise GrowError(f"{path / file} is not a readable safetensors file ({error})") from None
            self._handles[file] = handle
            for name in handle.keys():
                self._where[name] = file

    def _files(self) -> list[str]:
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise GrowError(f"{index} is not a valid safetensors index (no weight_map)") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.path / f).is_file()]
            if missing:
                raise GrowError(
                    f"{index} lists {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                    f"missing from {self.path}: copy the complete model directory"
                )
            return files
        if (self.path / SINGLE_FILE).is_file():
            return [SINGLE_FILE]
        other = sorted(p.name for p in self.path.glob("*.bin")) + sorted(p.name for p in self.path.glob("*.pth"))
        hint = f" (found {other[0]}: re-save it with save_pretrained(..., safe_serialization=True))" if other else ""
        raise GrowError(f"{self.path} has no {SINGLE_FILE} or {INDEX_FILE}{hint}")

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "SafetensorsDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        code = self._slice(name).get_dtype()
        if code not in _SAFETENSORS_DTYPES:
            raise GrowError(f"tensor {name} in {self.path} is stored as {code}; grow imports float weights only")
        return _SAFETENSORS_DTYPES[code]

    def _slice(self, name: str):
        if name not in self._where:
            raise GrowError(f"{self.path} has no tensor {name!r}: the weights do not match config.json")
        return self._handles[self._where[name]].get_slice(name)

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        return self._handles[self._where[name]].get_tensor(name).to(dtype)

    def read_rows(self, name: str, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows [start, stop) of a 2-D tensor; only those rows are copied out of the file."""
        return self._slice(name)[start:stop].to(dtype)
