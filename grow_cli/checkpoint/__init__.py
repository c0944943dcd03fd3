"""torch_dist checkpoints: layout facts, metadata, partial reads, streaming writes, model I/O."""
