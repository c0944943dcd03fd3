"""Performance-critical operations, each defined by a PyTorch reference implementation.

Every kernel here is one function whose PyTorch path is the specification: it is what runs on
CPU, what the tests check against a naive implementation, and what any fused GPU kernel behind
the same function must reproduce. See kernels/README.md.
"""

from kernels.lens import LensStats, lens_stats

__all__ = ["LensStats", "lens_stats"]
