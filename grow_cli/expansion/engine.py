"""The streaming expansion: read source pieces on demand, write target pieces as they are made.

The target is written through `write_checkpoint`, whose planner asks for each piece (a row block
of at most 32 MB of one layer of one tensor) only when the writer reaches it. A background
thread builds the next piece while the writer writes the current one; `build` fetches the one
or two source layers of one tensor it needs (a two-entry cache serves AKI's layer l / l+1 pairs
and the row blocks of a layer). So peak memory is about two source layers of one tensor plus a
few pieces, whatever the model size. Under torchrun each rank writes a contiguous share of the
pieces into its own shard file; the maps come from the seed alone, so the bytes do not depend on
the number of ranks. The output appears under its final name only when every rank is done.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grow_cli.checkpoint.atomic import check_output
from grow_cli.checkpoint.checks import check_not_input
from grow_cli.checkpoint.metadata import CheckpointInfo, ExpandDetails, LineageStep, common_state, read_info
from grow_cli.checkpoint.rundir import release_checkpoint
from grow_cli.checkpoint.tensors import CheckpointReader, Piece, write_checkpoint
from grow_cli.expansion.recipe import ExpandOptions, ExpansionRecipe, SourceRead
from grow_cli.growth_rules import check_growth
from grow_cli.shape import ModelShape

OPTIMIZER_POLICY = (
    "optimizer state is not carried: the expanded model starts with a fresh optimizer "
    "(iteration 0), as in the reference method; re-warm up the learning rate"
)


class SourceCache:
    """Fetches source tensors through `load`, keeping the last `capacity` reads of the tensor
    being grown (AKI's layers l and l+1, a layer's row blocks); another tensor drops the rest."""

    def __init__(self, load: Callable[[SourceRead], torch.Tensor | None], capacity: int = 2):
        self.load = load
        self.capacity = capacity
        self._items: OrderedDict[SourceRead, torch.Tensor | None] = OrderedDict()

    def __call__(self, read: SourceRead) -> torch.Tensor | None:
        if read in self._items:
            self._items.move_to_end(read)
            return self._items[read]
        for old in [r for r in self._items if r.key != read.key]:
            del self._items[old]
        while len(self._items) >= self.capacity:
            self._items.popitem(last=False)
        self._items[read] = tensor = self.load(read)
        return tensor

    def clear(self) -> None:
        self._items.clear()


def read_source(reader: CheckpointReader, read: SourceRead) -> torch.Tensor:
    return reader.read(read.key) if read.layer is None else reader.read_layer(read.key, read.layer)


def planned_reads(expansion: ExpansionRecipe, world: int = 1) -> list[SourceRead]:
    """Every source read the engine will make (cache misses included), for `--dry-run`."""
    loads: list[SourceRead] = []
    for share in expansion.assign(world):
        cache = SourceCache(loads.append)
        for piece in share:
            for read in expansion.reads(piece):
                cache(read)
    return loads


class Prefetcher:
    """Builds pieces on a background thread, `depth` ahead of the writer, in the writer's order.

    torch kernels and file writes release the GIL, so growing piece i+1 overlaps writing piece i;
    memory grows by `depth` pieces. The writer must ask for the pieces in the order given
    (DCP writes a single-file plan in plan order); anything else is a bug and raises.
    """

    def __init__(self, pieces: list[Piece], build: Callable[[Piece], torch.Tensor], depth: int = 1):
        self._pieces = pieces
        self._build = build
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grow-expand-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for piece in self._pieces:
                if not self._put((piece, self._build(piece))):
                    return
        except BaseException as error:  # handed to the writer's thread, which raises it
            self._put((None, error))

    def __call__(self, piece: Piece) -> torch.Tensor:
        expected, value = self._queue.get()
        if isinstance(value, BaseException):
            raise value
        if expected != piece:
            raise RuntimeError(f"the checkpoint writer asked for {piece.key}@{piece.offsets}, expected {expected.key}@{expected.offsets}")
        return value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class ExpandResult:
    """What an expansion did; `bytes_read`/`pieces` are summed over ranks."""

    output: Path
    source: CheckpointInfo
    target: CheckpointInfo
    options: ExpandOptions
    bytes_read: int
    bytes_written: int
    pieces: int
    ranks: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def open_source(path: str | Path, *, vocab: int | None = None) -> tuple[CheckpointReader, CheckpointInfo]:
    """The source's reader and grow record (clear errors for anything that is not one); `vocab`
    for a Megatron-LM source whose args do not tell it."""
    reader = CheckpointReader(path)
    return reader, read_info(path, vocab=vocab)


def check_paths(source: Path, output: Path, force: bool) -> None:
    """Refuse outputs that would overwrite or nest inside the source (or vice versa), or exist."""
    check_not_input(output, source)
    check_output(output, force, "output")


def notes_for(options: ExpandOptions, source: ModelShape) -> list[str]:
    """What the user should know about the checkpoint this expansion writes."""
    notes = [OPTIMIZER_POLICY]
    if not options.exact:
        notes.append(
            f"width {options.width} + depth {options.depth} changes the model's outputs (expected: "
            "training recovers); --width iso --depth identity is exactly function-preserving"
        )
    if source.tied_embeddings and options.width != "iso":
        notes.append("tied embeddings stay tied: the LM head's 1/C division is folded into the final RMSNorm gain")
    return notes


def target_info(
    info: CheckpointInfo, expansion: ExpansionRecipe, source: Path, stage: str | None, plan: str | None = None
) -> CheckpointInfo:
    """The expanded checkpoint's grow record: new shape, iteration 0, the lineage step."""
    options = expansion.options
    step = LineageStep(
        op="expand",
        source=str(source),
        source_id=info.checkpoint_id,
        details=ExpandDetails(
            width=options.width,
            depth=options.depth,
            seed=options.seed,
            noise=options.noise,
            stage=stage,
            plan=plan,
            source_shape=info.shape,
            source_iteration=info.iteration,
            source_consumed_samples=info.consumed_samples,
            exact=options.exact,
            optimizer="fresh",
        ),
    )
    return info.derive(step, shape=expansion.target, iteration=0, consumed_samples=0, stage=stage)


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_ranks(values: list[int]) -> list[int]:
    rank, world = _world()
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.int64)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def expand_checkpoint(
    source: str | Path,
    output: str | Path,
    target: ModelShape,
    options: ExpandOptions,
    *,
    stage: str | None = None,
    plan: str | None = None,
    force: bool = False,
    on_piece: Callable[[Piece, int, int], None] | None = None,
    vocab: int | None = None,
) -> ExpandResult:
    """Expand the checkpoint at `source` into `target`, writing `output` atomically.

    Collective when torch.distributed is initialised (every rank calls it; each writes its share).
    `stage` (plan stage or size name) and `plan` (plan file) are recorded in the lineage;
    `on_piece(piece, done, total)` is called after each piece this rank produces (progress).
    """
    start = time.perf_counter()
    reader, info = open_source(source, vocab=vocab)
    source, output = reader.path, Path(output)  # a run directory or `latest` names its checkpoint
    check_paths(source, output, force)
    check_growth(info.shape, target)
    expansion = ExpansionRecipe.for_checkpoint(reader, info.shape, target, options)
    new_info = target_info(info, expansion, source, stage, plan)
    rank, world = _world()
    mine = expansion.assign(world)[rank]
    cache = SourceCache(lambda read: read_source(reader, read))
    done = 0
    prefetch: Prefetcher | None = None

    def produce(piece: Piece) -> torch.Tensor:
        nonlocal done
        tensor = prefetch(piece)
        done += 1
        if on_piece is not None:
            on_piece(piece, done, len(mine))
        return tensor

    threads = torch.get_num_threads()
    # one core for the writer thread (checksums, file writes), the rest for building pieces:
    # idle OpenMP workers spin, so sharing every core between both measured slower
    torch.set_num_threads(max(1, threads - 1))
    try:
        with release_checkpoint(output, force=force, what="output") as tmp:
            prefetch = Prefetcher(mine, lambda piece: expansion.build(piece, cache))
            write_checkpoint(
                tmp,
                mine,
                produce,
                common=common_state(new_info, expansion.vocab_rows),
                objects=expansion.objects(),
                distributed=world > 1,
            )
    finally:
        if prefetch is not None:
            prefetch.close()
        cache.clear()
        torch.set_num_threads(threads)
    bytes_read, pieces = _sum_over_ranks([reader.bytes_read, len(mine)])
    return ExpandResult(
        output=output,
        source=info,
        target=new_info,
        options=options,
        bytes_read=bytes_read,
        bytes_written=expansion.bytes_written(),
        pieces=pieces,
        ranks=world,
        seconds=time.perf_counter() - start,
        notes=notes_for(options, info.shape),
    )
