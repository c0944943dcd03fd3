"""Typer commands whose options are dataclasses: each option is declared once, as a field.

A field's `Annotated[type, typer.Option(...)]` carries its flag and help, its default is the
option's default. `command_from(A, B)` turns a body `f(a: A, b: B)` into a Typer command whose
signature is the fields of A then B, so the command line, the dataclass the code receives and
any re-rendering of the flags (`flags_of`) cannot drift apart. Two commands that share a group
share those options; an option that is not in a command's groups is not on its command line,
and Typer rejects it there.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, get_args, get_type_hints

import typer
from typer.models import OptionInfo


def _parameters(group: type) -> list[inspect.Parameter]:
    hints = get_type_hints(group, include_extras=True)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=hints[f.name],
            default=inspect.Parameter.empty if f.default is MISSING else f.default,
        )
        for f in fields(group)
    ]


def command_from(*groups: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: `body(*instances)` becomes a command taking every field of `groups` as an option."""

    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        parameters = [p for group in groups for p in _parameters(group)]

        @functools.wraps(body)
        def command(**values: Any) -> Any:
            return body(*(group(**{f.name: values[f.name] for f in fields(group)}) for group in groups))

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


def option(flag: str, help: str, panel: str | None = None) -> OptionInfo:
    """typer.Option for a field: `Annotated[int, option("--iters", "Optimizer steps.", PANEL)]`."""
    return typer.Option(flag, help=help, rich_help_panel=panel)
