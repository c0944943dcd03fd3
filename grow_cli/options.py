"""Typer commands whose options are dataclasses: each option is declared once, as a field.

A field's `Annotated[type, typer.Option(...)]` carries its flag and help, its default is the
option's default. `command_from(A, B)` turns a body `f(a: A, b: B)` into a Typer command whose
signature is the fields of A then B, so the command line, the dataclass the code receives and
any re-rendering of the flags (`flags_of`) cannot drift apart. Two commands that share a group
share those options; an option that is not in a command's groups is not on its command line,
and Typer rejects it there. `Narrowed(A, drop=..., help=...)` is A without the options that mean
nothing to a command (they keep their defaults) and with the help texts it words differently
(`grow distill` takes `grow pretrain`'s options except the model's, which its checkpoint fixes).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, get_args, get_type_hints

import typer
from typer.models import OptionInfo


@dataclass(frozen=True)
class Narrowed:
    """`group`'s options less `drop` (built with their defaults), `help` rewording some of them."""

    group: type
    drop: tuple[str, ...] = ()
    help: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = {f.name for f in fields(self.group)}
        unknown = (set(self.drop) | set(self.help)) - names
        if unknown:
            raise TypeError(f"{self.group.__name__} has no option {', '.join(sorted(unknown))}")

    def kept(self) -> list:
        return [f for f in fields(self.group) if f.name not in self.drop]

    def annotation(self, name: str, hint: Any) -> Any:
        if name not in self.help:
            return hint
        base, *extras = get_args(hint)
        reworded = [copy.copy(extra) for extra in extras]
        for extra in reworded:
            if isinstance(extra, OptionInfo):
                extra.help = self.help[name]
        return Annotated[(base, *reworded)]

    def build(self, values: dict[str, Any]) -> Any:
        return self.group(**{f.name: values[f.name] for f in self.kept()})


def _narrowed(group: type | Narrowed) -> Narrowed:
    return group if isinstance(group, Narrowed) else Narrowed(group)


def _parameters(group: type | Narrowed) -> list[inspect.Parameter]:
    view = _narrowed(group)
    hints = get_type_hints(view.group, include_extras=True)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=view.annotation(f.name, hints[f.name]),
            default=inspect.Parameter.empty if f.default is MISSING else f.default,
        )
        for f in view.kept()
    ]


def command_from(*groups: type | Narrowed) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: `body(*instances)` becomes a command taking every field of `groups` as an option."""

    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        parameters = [p for group in groups for p in _parameters(group)]

        @functools.wraps(body)
        def command(**values: Any) -> Any:
            return body(*(_narrowed(group).build(values) for group in groups))

        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return decorate


def flags_of(group: type) -> dict[str, tuple[str, str | None]]:
    """field name -> (flag, negative flag or None), as declared: "--resume/--no-resume" -> both."""
    result = {}
    for name, hint in get_type_hints(group, include_extras=True).items():
        info = next(m for m in get_args(hint)[1:] if isinstance(m, OptionInfo))
        on, _, off = str(info.default).partition("/")  # in Annotated, Option's first positional is the flag
        result[name] = (on, off or None)
    return result


def argv_of(options: Any, paths: frozenset[str] = frozenset()) -> list[str]:
    """The flags that reproduce a dataclass of options: values at their default are left out,
    booleans become their on/off flag, list values repeat the flag, and the fields named in
    `paths` are made absolute (the command may run in another directory, e.g. a SLURM job)."""
    flags = flags_of(type(options))
    argv: list[str] = []
    for f in fields(options):
        value = getattr(options, f.name)
        if value is None or (f.default is not MISSING and value == f.default):
            continue
        on, off = flags[f.name]
        if isinstance(value, bool):
            argv.append(on if value else off)
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            argv += [on, str(Path(item).expanduser().resolve()) if f.name in paths else str(item)]
    return argv


def option(flag: str, help: str, panel: str | None = None) -> OptionInfo:
    """typer.Option for a field: `Annotated[int, option("--iters", "Optimizer steps.", PANEL)]`."""
    return typer.Option(flag, help=help, rich_help_panel=panel)
