"""Tensor-level access to torch_dist checkpoints without building a model.

`CheckpointReader` reads one tensor, or one slice of one (a layer of a stacked tensor, a block of
rows), through PyTorch DCP partial loads: only the stored chunks that overlap the request are
read from disk. `write_checkpoint` writes a checkpoint piece by piece through DCP with a planner
that asks a producer for each piece only when the writer reaches it, so the whole model is never
in memory. Both work in one process (no process group) or collectively across ranks; what they
write loads in megatron-core at any TP/PP.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from grow_cli.checkpoint.integrity import check_integrity, check_shard_files, record_checksums
from grow_cli.checkpoint.layout import TensorSpec
from grow_cli.checkpoint.rundir import resolve_checkpoint
from grow_cli.checkpoint.space import check_room, disk_full_as_error
from grow_cli.errors import GrowError
from grow_cli.runtime.megatron_compat import is_common_state


def validate_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory `path` names (a checkpoint, a run directory or its `latest`);
    a GrowError unless it is a complete torch_dist checkpoint whose contents match their
    recorded checksums (`grow_cli.checkpoint.integrity`)."""
    from megatron.core.dist_checkpointing.core import maybe_load_config

    path = resolve_checkpoint(path)
    if not path.is_dir():
        raise GrowError(f"checkpoint {path} does not exist or is not a directory")
    meta = path / "metadata.json"
    if not meta.is_file():
        raise GrowError(f"{path} is not a torch_dist checkpoint (no metadata.json)")
    try:
        backend = maybe_load_config(str(path)).sharded_backend
    except (json.JSONDecodeError, TypeError):
        raise GrowError(f"{meta} is not valid torch_dist metadata; the checkpoint is corrupted") from None
    if backend != "torch_dist":
        raise GrowError(f"{path} uses the {backend!r} checkpoint format; grow reads torch_dist checkpoints")
    if not (path / ".metadata").is_file():
        raise GrowError(f"{path} has no .metadata (DCP index): the checkpoint is incomplete")
    check_integrity(path)
    return path


@contextlib.contextmanager
def _single_process_dcp():
    """DCP warns on every call without a process group; here that is the intended mode."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


@dataclass(frozen=True)
class Piece:
    """A block of one global tensor: `sizes` elements starting at `offsets`."""

    key: str
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.sizes) * torch.empty((), dtype=self.dtype).element_size()


def whole(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Piece:
    return Piece(key, tuple(shape), (0,) * len(shape), tuple(shape), dtype)


def layer_piece(key: str, shape: tuple[int, ...], layer: int, dtype: torch.dtype) -> Piece:
    """Layer `layer` of a tensor stacked on a leading layer axis."""
    return Piece(key, tuple(shape), (layer,) + (0,) * (len(shape) - 1), (1, *shape[1:]), dtype)


def tile(spec: TensorSpec, dtype: torch.dtype, block_bytes: int) -> list[Piece]:
    """`spec`'s tensor cut into the pieces a streaming writer produces one at a time: each layer
    of a stacked tensor separately, each matrix in blocks of whole rows of at most `block_bytes`
    (at least one row), vectors whole. Together the pieces tile the tensor exactly once."""
    layers = range(spec.shape[0]) if spec.stacked else [None]
    matrix = spec.shape[1:] if spec.stacked else spec.shape
    pieces = []
    for layer in layers:
        lead, lead_size = ((), ()) if layer is None else ((layer,), (1,))
        if len(matrix) == 1:
            pieces.append(Piece(spec.key, spec.shape, lead + (0,), lead_size + matrix, dtype))
            continue
        rows, cols = matrix
        block = max(1, block_bytes // (cols * dtype.itemsize))
        for start in range(0, rows, block):
            size = min(block, rows - start)
            pieces.append(Piece(spec.key, spec.shape, lead + (start, 0), lead_size + (size, cols), dtype))
    return pieces


class _SliceLoadPlanner(DefaultLoadPlanner):
    """Reads exactly the requested chunk of each key into caller-provided buffers."""

    def __init__(self, chunks: dict[str, ChunkStorageMetadata]):
        super().__init__(allow_partial_load=True)
        self._chunks = chunks

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, chunk in self._chunks.items():
            items.extend(create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk]))
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        # The buffer IS the requested chunk; DCP's read items carry offsets relative to it.
        return self.state_dict[index.fqn]


class CheckpointReader:
    """Random access to the tensors of one torch_dist checkpoint; never loads what is not asked."""

    def __init__(self, path: str | Path):
        self.path = validate_checkpoint(path)
        self._storage = FileSystemReader(str(self.path))
        try:
            self.metadata = self._storage.read_metadata()
        except Exception as error:
            raise GrowError(f"{self.path}/.metadata cannot be read ({type(error).__name__}): corrupted checkpoint") from None
        check_shard_files(self.path, self.metadata.storage_data)
        self.bytes_read = 0

    # ---- what is there ------------------------------------------------------------------
    def tensor_keys(self) -> list[str]:
        return [k for k, v in self.metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)]

    def object_keys(self) -> list[str]:
        """The model's byte entries (megatron's `_extra_state`), not the common state newer
        megatron-core releases keep among them (`read_common` reads that)."""
        return [
            k for k, v in self.metadata.state_dict_metadata.items()
            if isinstance(v, BytesStorageMetadata) and not is_common_state(k)
        ]

    def has(self, key: str) -> bool:
        return key in self.metadata.state_dict_metadata

    def _tensor_md(self, key: str) -> TensorStorageMetadata:
        md = self.metadata.state_dict_metadata.get(key)
        if not isinstance(md, TensorStorageMetadata):
            raise GrowError(f"{self.path} has no tensor {key!r}; is it a GPT checkpoint written by megatron-core?")
        return md

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensor_md(key).size)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensor_md(key).properties.dtype

    def stored_bytes(self, key: str, offsets=None, sizes=None) -> int:
        """Bytes DCP reads from disk for a request: every stored chunk it overlaps, whole."""
        md = self._tensor_md(key)
        offsets = tuple(offsets or (0,) * len(md.size))
        sizes = tuple(sizes or md.size)
        total = 0
        for index, info in self.metadata.storage_data.items():
            if index.fqn != key:
                continue
            chunk = next(c for c in md.chunks if tuple(c.offsets) == tuple(index.offset))
            if all(
                o < co + cs and co < o + s for o, s, co, cs in zip(offsets, sizes, chunk.offsets, chunk.sizes)
            ):
                total += info.length
        return total

    # ---- reading ------------------------------------------------------------------------
    def read(self, key: str, offsets=None, sizes=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The block `[offsets, offsets + sizes)` of tensor `key` (the whole tensor by default)."""
        md = self._tensor_md(key)
        offsets = tuple(offsets or (0,) * len(md.size))
        sizes = tuple(sizes or md.size)
        buffer = torch.empty(sizes, dtype=md.properties.dtype)
        chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
        with _single_process_dcp():
            dcp.load({key: buffer}, storage_reader=self._storage, planner=_SliceLoadPlanner({key: chunk}), no_dist=True)
        self.bytes_read += self.stored_bytes(key, offsets, sizes)
        return buffer if dtype is None else buffer.to(dtype)

    def read_layer(self, key: str, layer: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One layer of a layer-stacked tensor, without the layer axis."""
        shape = self.shape(key)
        return self.read(key, (layer,) + (0,) * (len(shape) - 1), (1, *shape[1:]), dtype)[0]

    def read_rows(self, key: str, start: int, count: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        shape = self.shape(key)
        return self.read(key, (start,) + (0,) * (len(shape) - 1), (count, *shape[1:]), dtype)


class _StreamingSavePlanner(DefaultSavePlanner):
    """Plans the write from a list of pieces and produces each piece's data only on demand."""

    def __init__(self, pieces: list[Piece], produce: Callable[[Piece], torch.Tensor], objects: dict[str, object]):
        super().__init__()
        self._pieces = {(p.key, tuple(p.offsets)): p for p in pieces}
        self._produce = produce
        self._objects = objects

    def create_local_plan(self) -> SavePlan:
        items = [
            WriteItem(
                index=MetadataIndex(p.key, torch.Size(p.offsets)),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(offsets=torch.Size(p.offsets), sizes=torch.Size(p.sizes)),
                    properties=TensorProperties(dtype=p.dtype),
                    size=torch.Size(p.global_shape),
                ),
            )
            for p in self._pieces.values()
        ]
        items += [WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO) for key in self._objects]
        self.plan = SavePlan(items, planner_data={})
        return self.plan

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            buffer = io.BytesIO()
            # megatron stores a ShardedObject as the list of its replicas' data
            torch.save([self._objects[write_item.index.fqn]], buffer)
            buffer.seek(0)
            return buffer
        piece = self._pieces[(write_item.index.fqn, tuple(write_item.index.offset))]
        tensor = self._produce(piece)
        if tuple(tensor.shape) != tuple(piece.sizes) or tensor.dtype != piece.dtype:
            raise RuntimeError(
                f"producer returned {tuple(tensor.shape)}/{tensor.dtype} for {piece.key} "
                f"{piece.offsets}, expected {piece.sizes}/{piece.dtype}"
            )
        return tensor.contiguous()


def write_checkpoint(
    path: str | Path,
    pieces: Iterable[Piece],
    produce: Callable[[Piece], torch.Tensor],
    *,
    common: dict,
    objects: dict[str, object] | None = None,
    distributed: bool = False,
) -> None:
    """Write a torch_dist checkpoint into the existing directory `path`.

    `pieces` are this rank's blocks (together, across ranks, they must tile every global tensor
    exactly once); `produce(piece)` returns its data when the writer gets to it. `common` becomes
    `common.pt` and `objects` byte entries (megatron's `_extra_state` ShardedObjects: pass the
    object's value, e.g. None; it is stored the way megatron stores it), both written by rank 0. With `distributed=True` this is a collective over the default process group.
    """
    path = Path(path)
    is_main = not distributed or torch.distributed.get_rank() == 0
    pieces = list(pieces)
    check_room(path, sum(p.nbytes for p in pieces))
    planner = _StreamingSavePlanner(pieces, produce, (objects or {}) if is_main else {})
    writer = FileSystemWriter(str(path), thread_count=1, single_file_per_rank=True, sync_files=True)
    with _single_process_dcp(), disk_full_as_error(path):
        dcp.save({}, storage_writer=writer, planner=planner, no_dist=not distributed)
    if is_main:
        from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config

        torch.save(common, path / "common.pt")
        save_config(CheckpointingConfig(sharded_backend="torch_dist"), str(path))
        record_checksums(path)  # dcp.save returned on the coordinator: every rank's shards are complete
