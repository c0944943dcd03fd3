"""Check a plan file against its schema before building anything from it.

Plan files are edited by hand (a longer budget, a smaller batch), and a mistake there used to
surface as a `TypeError` deep in a constructor, or not at all: `global_bacth: 256` was dropped
and the run trained with the planned batch; `train_iters: -5` trained zero steps. The schema is
the plan's own dataclasses (their fields and annotations, so there is no second list of keys to
keep in step) plus the ranges below; every problem is one line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing

from grow_cli.errors import GrowError

# Fields that must be > 0 (budgets, iterations, batches, sizes, rates) and those that must be >= 0.
POSITIVE = frozenset(
    {
        "train_iters", "global_batch", "micro_batch", "tokens_scratch", "tokens_per_param", "lr",
        "seq_len", "vocab", "hidden", "ffn", "layers", "heads", "kv_groups", "head_dim", "tp", "pp",
        "dp", "nominal_params", "params_total", "index", "mfu",
    }
)
NON_NEGATIVE = frozenset({"tokens_incremental", "tokens_cumulative", "warmup_iters", "min_lr", "warmup_min"})


def _problem(source: str, where: str, what: str) -> GrowError:
    return GrowError(f"{source}: {where} {what}; fix the plan file or re-create it with `grow plan --out`")


def _check_value(value, hint, source: str, where: str) -> None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return
        hint, origin = options[0], typing.get_origin(options[0])
    if dataclasses.is_dataclass(hint):
        check_record(hint, value, source, where)
        return
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _problem(source, where, f"must be a list, got {value!r}")
        for number, item in enumerate(value):
            _check_value(item, typing.get_args(hint)[0], source, f"{where}[{number}]")
        return
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(hint)
    if expected is None:
        return
    if not isinstance(value, expected) or (hint is not bool and isinstance(value, bool)):
        name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]
        raise _problem(source, where, f"must be {name}, got {value!r}")
    if hint not in (int, float):  # ranges are for numbers (PlanRequest.kv_groups is "auto"/"mha"/"N")
        return
    field = where.rsplit(".", 1)[-1]
    if field in POSITIVE and value <= 0:
        raise _problem(source, where, f"must be positive, got {value!r}")
    if field in NON_NEGATIVE and value < 0:
        raise _problem(source, where, f"must not be negative, got {value!r}")


def check_record(cls, data, source: str, where: str) -> None:
    """A GrowError unless `data` is a valid serialised `cls` (a dataclass)."""
    label = where or "the plan"
    if not isinstance(data, dict):
        raise _problem(source, label, f"must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in hints:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise _problem(source, f"{where}.{key}" if where else str(key), f"is not a field of {label}{hint}")
    for field in dataclasses.fields(cls):
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        path = f"{where}.{field.name}" if where else field.name
        if field.name not in data:
            if required:
                raise GrowError(f"{source} is an incomplete grow plan file (missing {path}); re-create it with `grow plan --out`")
            continue
        _check_value(data[field.name], hints[field.name], source, path)
