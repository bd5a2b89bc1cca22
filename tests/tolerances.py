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
# Exact vertices stored as float32, recomputed through the model in float64: the
# relative feature error each must meet (issue 8 acceptance).
LP_STORED_REL_ERROR_F64 = 1e-6
# The same float64 Jacobian by forward and by reverse mode.
JACOBIAN_MODES_AGREE = 1e-12
# Relative singular-value cut-off for numerical ranks of float64 Jacobians.
RANK_RTOL = 1e-10
# A table figure against the same quantity recomputed independently in float64.
RECHECK = 1e-9
# A patch composition recomputed on the CPU from the stored logits and candidates,
# against the stored float32 vertex (composed on the solver's device), in [0, 1] pixels.
RECOMPOSED = 1e-6
# A gradient vertex's pushed unit against the LP optimum of the same unit (the gradient
# solver meets the collision only to 1e-2, so it may end slightly past the optimum).
GRADIENT_VS_LP = 0.05
# The optimal value of one LP by two solvers (HiGHS's feasibility tolerance is 1e-9),
# relative to 1 + |value|.
LP_OBJECTIVE = 1e-7
