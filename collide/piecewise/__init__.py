"""The piecewise-linear core: a ReLU layer as an affine map on the target's linear piece,
the LPs over it (HiGHS, with region rows taken in lazily), and the exact collision set
with its measures (ball, dimension, widths, uniform samples and their diagnostics)."""
