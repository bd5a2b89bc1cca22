"""Named numerical tolerances, in one place."""

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
# relative feature error each must meet.
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
# A random-ball point's L2 distance to the target against the distance asked for,
# relative (bisection on the step in float64 stops at ~4e-16 of the step).
BALL_DISTANCE = 1e-12
# A null-space move of the first layer's input: the target's positive pre-activations,
# recomputed through the model in float64, against the target's (absolute; features ~1).
NULL_SPACE_KEEPS = 1e-9
# The approximation frontier's distance against SLSQP on the same convex problem
# (SLSQP meets its constraint to about 1e-8; the frontier's rel_tol leaves E up to
# rel_tol below ε, which moves the distance by about as much), relative to 1 + distance.
FRONTIER_VS_ORACLE = 2e-3
# An ε = 0 frontier point (HiGHS QP, feasibility tolerance 1e-9): its float64 feature error.
FRONTIER_EXACT = 1e-6
# Points of an exact collision set computed in float64 (samples, extreme points, the
# ball's centre): their relative feature error, and how far they may cross a row.
SET_EXACT = 1e-9
# The mean of 4000 hit-and-run samples of a polygon against its exact mean (standard
# deviation ~0.28 per coordinate; at 400 effective samples the standard error is 0.014).
MC_POLYGON_MEAN = 0.04
# A saturation threshold found by bisection in float64 against its closed form.
THRESHOLD = 1e-9
# A gradient vertex at a smooth activation (float32 solve, criterion 1e-2), its relative
# post-activation error recomputed by an independent float64 forward pass.
SMOOTH_REL_ERROR = 1e-2 + 1e-5
# The same vertex LP in its dense and its layered form (HiGHS, feasibility 1e-9): the
# optima agree to the solver's tolerance, then both are stored as float32 (~6e-8 steps).
LP_FORMS_AGREE = 1e-6
# The same gradient solve twice on one CPU in one process (benchmarks/gpu_suite.py's
# agreement item with --device cpu): the same float ops in the same order, bit for bit.
SAME_DEVICE_SOLVE = 0.0
# One float64 quantity by two orders of products (a row's reach on a subspace by numpy's
# product and by torch's, or a box row's as the basis's row norm), relative to the row's
# size: rounding, some 1e-15.
PRODUCT_ORDER = 1e-13
# A row's largest slack over a collision set by scipy's LP (HiGHS, feasibility tolerance
# 1e-9 by default on rows of unit scale) at or below which the row holds all over the set.
IMPLICIT_SLACK = 1e-7
