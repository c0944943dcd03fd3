"""grow's short dtype names ("bf16", "fp32", "fp16") and what they are in torch and Hugging Face.

Every command spells precision the same way on its command line, in its config and in its
records; this is the one map from those names to torch dtypes and to the long names
transformers writes in config.json. torch is imported only when a torch dtype is asked for, so
`cli.py` modules may import the names.
"""

from __future__ import annotations

from grow_cli.errors import GrowError

# short name -> torch attribute / config.json name (transformers spells them like torch)
LONG_NAMES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}
# what grow trains, exports and imports weights in (fp16 is only ever read, from HF files)
WEIGHT_DTYPES = ("bf16", "fp32")


def torch_dtype(name: str):
    """The torch dtype of a short name; a GrowError naming the choices for an unknown one."""
    import torch

    if name not in LONG_NAMES:
        raise GrowError(f"unknown dtype {name!r}; choose one of {', '.join(LONG_NAMES)}")
    return getattr(torch, LONG_NAMES[name])


def short_name(dtype) -> str | None:
    """The short name of a torch dtype (None for one grow has no name for)."""
    long = str(dtype).removeprefix("torch.")
    return next((short for short, name in LONG_NAMES.items() if name == long), None)


def from_long_name(long: str | None) -> str | None:
    """The short name of a config.json dtype ("bfloat16" -> "bf16"), None if unknown or absent."""
    return next((short for short, name in LONG_NAMES.items() if name == long), None)
