"""`grow expand`: grow a trained torch_dist checkpoint into the next model size, streaming.

maps (seeded index maps: which source unit each target unit copies), width (FPI/AKI/iso growth
operators on plain tensors), depth (which source layer each target layer copies), gqa (head and
KV-group maps that keep grouped-query attention exact), target (the target shape from a size,
plan stage or flags), recipe (`ExpansionRecipe`: every target piece, what it reads and how it is
built), engine (the streaming read/build/write), verify (`--verify`: source vs expanded outputs),
cli.
"""
