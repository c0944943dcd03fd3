"""Parsing and printing of human quantities: "8B" parameters, "2x" Chinchilla, "320B" tokens,
"1.5 GiB" of checkpoint."""

from __future__ import annotations

import re

from grow_cli.errors import GrowError

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*$", re.IGNORECASE)


def parse_count(text: str, what: str = "size") -> float:
    """Parse "350M", "1.5B", "2e9" or "70b" into a number; raise GrowError otherwise."""
    match = _COUNT.match(str(text))
    if not match:
        raise GrowError(
            f"cannot read {what} {text!r}: write a number with an optional K/M/B/T suffix, e.g. 8B or 350M"
        )
    value = float(match.group(1)) * _SUFFIX[match.group(2).upper()]
    if value <= 0:
        raise GrowError(f"{what} {text!r} must be positive")
    return value


def parse_multiplier(text: str, what: str = "multiplier") -> float:
    """Parse "2x", "2", "0.5x" into a positive float."""
    raw = str(text).strip().lower().removesuffix("x")
    try:
        value = float(raw)
    except ValueError:
        raise GrowError(f"cannot read {what} {text!r}: write a number such as 2x or 1.5") from None
    if value <= 0:
        raise GrowError(f"{what} {text!r} must be positive")
    return value


def format_count(value: float, digits: int = 3) -> str:
    """Format a count with a K/M/B/T suffix: 1.09e9 -> '1.09B' (and 999.9e6 -> '1B', not '1e+03M')."""
    value = float(f"{value:.{digits}g}")
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


GIB = 2**30


def format_bytes(nbytes: float) -> str:
    """Binary units, as memory and `du -h` report them: 1.5 * 2**30 -> '1.5 GiB', 300 -> '300 B'."""
    for unit, scale in (("TiB", 2**40), ("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def size_name(value: float) -> str:
    """The conventional name of a model size: 1e9 -> '1B', 3.5e8 -> '350M'."""
    return format_count(value, digits=3)
