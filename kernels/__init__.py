"""Performance-critical operations, each defined by a PyTorch reference implementation.

Imported as `grow_kernels` (the folder is kernels/; see docs/CONTRIBUTING.md, "The kernels
package"): a distribution named `kernels` exists on PyPI, and grow must never import it. Every
op here is one function whose PyTorch path is the specification: it runs on CPU, the tests check
it against a naive implementation, and the fused GPU kernel behind the same function must
reproduce it. See kernels/README.md.
"""

from grow_kernels.divergence import linear_divergence
from grow_kernels.sums import TokenStats

__all__ = ["TokenStats", "linear_divergence"]
