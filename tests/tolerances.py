"""Named numerical tolerances, in one place (STYLE.md, habit 8)."""

# Two computations of the same float32 quantity by different routes.
UNCHANGED = 1e-6
# float32 forward passes of the same input through differently ordered ops.
EQUIVALENT = 1e-4
# Exact (LP) vertices: every constraint holds to this, in float64.
LP_CONSTRAINT = 1e-6
# Exact vertices stored as float32 and pushed through the float32 model.
LP_STORED_REL_ERROR = 1e-5
# Monte Carlo means over MEAN_SAMPLES draws (std error about 1e-3).
MC_MEAN = 5e-3
MEAN_SAMPLES = 200_000
