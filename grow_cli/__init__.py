"""grow: progressive growth of a language-model series on Megatron-core."""

__version__ = "0.1.0"
