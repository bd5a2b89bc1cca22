"""Frozen, validated configuration for every stage.

Each dataclass checks itself in ``__post_init__`` and says what was wrong, so a bad
value fails before any work starts or any file is written.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field
from typing import Literal

from collide.checks import choice as _choice
from collide.checks import non_negative as _non_negative
from collide.checks import positive as _positive
from collide.checks import require as _require
from collide.config_loader import config_keys as config_keys  # the keys' reference reads it here
from collide.errors import ConfigError

# Each choice is one Literal type: configs are annotated with it (so ``from_dict`` refuses
# anything else by name) and the tuple of its values is what code iterates over.
# The MLP with another hidden activation is ``mlp-NAME`` (collide.models.zoo.MLP_ACTIVATIONS).
Architecture = Literal["mlp", "lenet5", "mlp-tanh", "mlp-sigmoid", "mlp-elu", "mlp-gelu"]
Loss = Literal["paper", "penalty"]
Method = Literal["gradient", "exact", "paper"]
Init = Literal["target", "other"]
# Where an experiment's classifier comes from: a shipped checkpoint when one matches the
# data and training config, else trained (``auto``); only shipped; always trained.
CheckpointChoice = Literal["auto", "shipped", "train"]
Sampler = Literal["stick", "dirichlet"]
KnnMethod = Literal["auto", "exact", "pynndescent"]
ARCHITECTURES: tuple[str, ...] = typing.get_args(Architecture)
LOSSES: tuple[str, ...] = typing.get_args(Loss)
METHODS: tuple[str, ...] = typing.get_args(Method)
INITS: tuple[str, ...] = typing.get_args(Init)
SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)
KNN_METHODS: tuple[str, ...] = typing.get_args(KnnMethod)

# A setting added after results were stored under digests that did not name it: a digest
# names it only when it differs from its default, so the results computed before it
# existed (which used that default, or did not depend on it) stay fresh.
UNLESS_DEFAULT = {"digest": "unless-default"}


# How the exact solver's LPs are solved: see collide.piecewise.lp.
LP_SOLVERS = ("highs", "linprog")

# An experiment's name names its files (<name>.zarr, .<name>-xxxxxxxx.parquet, <name>-summary.png):
# short enough for every such name to stay under the file system's 255 bytes, never hidden.
NAME_MAX = 100
EXPERIMENT_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}")


@dataclass(frozen=True)
class TrainConfig:
    """How a classifier is trained (or found already trained) on MNIST.

    ``min_accuracy`` is the paper's reported test accuracy for the MLP (§3.1); a model
    that misses it is an error, not a silent weaker reproduction. ``threads``: torch's CPU
    threads while training; part of the checkpoint's identity, since another count
    rounds the gradients' sums differently.

    Attributes:
        arch: the classifier's architecture: the paper's MLP, LeNet-5, or the MLP with tanh, sigmoid, ELU or GELU
            (mlp-tanh, ...).
        epochs: passes over the training set.
        batch_size: training images per optimizer step.
        lr: Adam's learning rate.
        seed: seeds the weights' initialisation and the batches' order.
        min_accuracy: the lowest test accuracy a trained model may reach without being refused.
        train_limit: train on only the first that many training images (None: all of them).
        threads: torch's CPU threads while training (part of the checkpoint's identity).
    """

    arch: Architecture = "mlp"
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    min_accuracy: float = 0.9664
    train_limit: int | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        _choice("arch", self.arch, ARCHITECTURES)
        _require(self.epochs >= 1, f"expected epochs >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"expected batch_size >= 1, got {self.batch_size}")
        _positive("lr", self.lr)
        _require(0 <= self.min_accuracy <= 1, f"expected 0 <= min_accuracy <= 1, got {self.min_accuracy}")
        _require(
            self.train_limit is None or self.train_limit >= 1,
            f"expected train_limit >= 1 or None, got {self.train_limit}",
        )
        _require(self.threads >= 1, f"expected train.threads >= 1, got {self.threads}")


@dataclass(frozen=True)
class GradientConfig:
    """The gradient vertex solver (paper §2, with an optional penalty continuation).

    Adam on the input, projected onto ``[lower, upper]`` after every step, with the
    learning rate decaying geometrically from ``lr`` to ``lr_end`` over ``max_steps``.

    ``others_weight`` weighs L₋ⁱ's second term, Σ_{j≠i}|ỹⱼ| over the target's other
    non-positive units (the paper has 1). It keeps those units near zero, which also holds
    the pushed unit back: on the MNIST MLP at relu1 three of five vertices ended with the
    pushed unit above the target's own value. The penalty below enforces ỹⱼ ≤ 0 by
    itself, so by default the pushed unit alone is minimised, as in the exact LP.

    ``loss="paper"`` minimises ``alpha*L+ + beta*L-^i`` alone. ``loss="penalty"`` adds
    ``gamma/2 * ||relu(y~ on the target's non-positive units)||^2`` and raises ``alpha``
    and ``gamma`` by the factor ``growth`` every step (continuation), which turns the
    approximate collision into a tight one.

    The collision criterion: the largest relative post-activation error at the layer is
    at most ``rel_tol`` and every unit the target has non-positive is at most ``neg_tol``
    (checked from ``min_steps`` on). Once an iterate meets it, the solver keeps
    optimising and keeps the feasible iterate with the lowest pushed unit; a vertex stops
    when that value has not improved by ``plateau_tol`` (relative) over ``plateau_window``
    steps, or at ``max_steps``. With ``stall_window`` > 0 a vertex that has not met the
    criterion also stops once its feature error has not fallen by ``stall_tol``
    (relative) for that many steps: it will not meet it (outcome ``stalled``). A vertex
    is *valid* when it meets the criterion and its pushed unit ends at least
    ``push_margin`` x max|ỹᵗ| below the target's: a vertex that did not move is no vertex.

    Attributes:
        loss: paper (α·L₊ + β·L₋ⁱ alone) or penalty (adds the continuation penalty on ỹⱼ > 0).
        alpha: weight of L₊, the error on the target's positive units.
        beta: weight of L₋ⁱ, the pushed unit's term.
        others_weight: weight of Σ_{j≠i}|ỹⱼ| over the target's other non-positive units (the paper has 1).
        gamma: weight of the penalty on the target's non-positive units above 0 (loss=penalty).
        growth: factor alpha and gamma grow by every step (loss=penalty; 1: no continuation).
        lr: Adam's learning rate at the first step.
        lr_end: the learning rate at max_steps (geometric decay from lr).
        min_steps: steps before the collision criterion is first checked.
        max_steps: the most steps a vertex takes.
        rel_tol: largest relative post-activation error at the layer for a collision.
        neg_tol: largest value a unit the target has non-positive may take for a collision.
        plateau_window: steps without plateau_tol improvement of the pushed unit after which a vertex stops.
        plateau_tol: relative improvement of the pushed unit that counts as progress.
        stall_window: steps without stall_tol fall of the feature error after which an unmet vertex stops (0: never).
        stall_tol: relative fall of the feature error that counts as progress (with stall_window).
        push_margin: how far below the target's value (x max|ỹᵗ|) the pushed unit must end for a valid vertex.
        saturation_tol: how close to its asymptote a smooth activation's output (sigmoid, GELU) counts as saturated.
        lower: smallest input value (the box the input is projected onto).
        upper: largest input value.
    """

    loss: Loss = "penalty"
    alpha: float = 1.0
    beta: float = 1.0
    others_weight: float = 0.0
    gamma: float = 1.0
    growth: float = 1.01
    lr: float = 0.01
    lr_end: float = 1e-3
    min_steps: int = 50
    max_steps: int = 2000
    rel_tol: float = 1e-2
    neg_tol: float = 1e-2
    plateau_window: int = 200
    plateau_tol: float = 1e-3
    stall_window: int = 0
    stall_tol: float = 1e-2
    push_margin: float = 1e-2
    saturation_tol: float = field(default=1e-2, metadata=UNLESS_DEFAULT)
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        _choice("loss", self.loss, LOSSES)
        _positive("saturation_tol", self.saturation_tol)
        _require(self.plateau_window >= 1, f"expected plateau_window >= 1, got {self.plateau_window}")
        _require(self.stall_window >= 0, f"expected stall_window >= 0, got {self.stall_window}")
        _non_negative("stall_tol", self.stall_tol)
        _non_negative("plateau_tol", self.plateau_tol)
        _non_negative("push_margin", self.push_margin)
        for name in ("alpha", "beta", "lr", "lr_end", "rel_tol"):
            _positive(name, getattr(self, name))
        _non_negative("gamma", self.gamma)
        _non_negative("others_weight", self.others_weight)
        _non_negative("neg_tol", self.neg_tol)
        _require(
            math.isfinite(self.growth) and self.growth >= 1.0,
            f"expected growth >= 1, got {self.growth}",
        )
        _require(self.min_steps >= 0, f"expected min_steps >= 0, got {self.min_steps}")
        _require(
            self.max_steps >= max(1, self.min_steps),
            f"expected max_steps >= max(1, min_steps={self.min_steps}), got {self.max_steps}",
        )
        _require(self.lower < self.upper, f"expected lower < upper, got {self.lower} >= {self.upper}")


@dataclass(frozen=True)
class PaperConfig:
    """The authors' own vertex scheme (paper §2, and the authors' code).

    The paper's loss ``alpha*L+ + beta*L-^i`` (α=100, β=10 as the authors used), momentum
    ``v = m·v + (1-m)·g; x -= lr·v`` from ``v = 0``, a piecewise learning rate divided by
    ``1/lr_drop`` at one and two thirds of ``steps``, clipping to the box, a fixed number
    of steps. The authors' rates (0.1 to 0.001) are for 0-255 pixels; on [0, 1] inputs the
    same step is 255² times too large. ``lr=None`` (the default) takes the rate chosen for
    the model at hand on [0, 1] inputs, :data:`collide.solvers.paper.PAPER_TUNED_LR`, through
    ``PaperSolver(config, arch=...)``.

    The paper states no tolerance for its approximate collisions. A vertex of this scheme
    counts as valid when its relative feature error is at most ``rel_tol`` (its
    non-positive units at most ``neg_tol``, unchecked when None, and its pushed unit
    ``push_margin`` x max|ỹᵗ| below the target's); the table reports its actual error.

    Attributes:
        alpha: weight of L₊, the error on the target's positive units (the authors' 100).
        beta: weight of L₋ⁱ, the pushed unit's term (the authors' 10).
        lr: the learning rate on [0, 1] inputs (None: the rate tuned for the model).
        lr_drop: factor the learning rate is multiplied by at one and two thirds of steps.
        momentum: m of the momentum update v = m·v + (1-m)·g.
        steps: how many steps each vertex takes.
        rel_tol: largest relative feature error of a valid vertex.
        neg_tol: largest value of the target's non-positive units for a valid vertex (None: unchecked).
        push_margin: how far below the target's value (x max|ỹᵗ|) the pushed unit must end for a valid vertex.
        saturation_tol: how close to its asymptote a smooth activation's output (sigmoid, GELU) counts as saturated.
        lower: smallest input value (each step clips to the box).
        upper: largest input value.
    """

    alpha: float = 100.0
    beta: float = 10.0
    lr: float | None = None
    lr_drop: float = 0.1
    momentum: float = 0.99
    steps: int = 6000
    rel_tol: float = 0.5
    neg_tol: float | None = None
    push_margin: float = 1e-2
    saturation_tol: float = field(default=1e-2, metadata=UNLESS_DEFAULT)
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "lr_drop", "rel_tol", "saturation_tol"):
            _positive(name, getattr(self, name))
        if self.lr is not None:
            _positive("lr", self.lr)
        _require(0 <= self.momentum < 1, f"expected 0 <= momentum < 1, got {self.momentum}")
        _require(self.steps >= 1, f"expected steps >= 1, got {self.steps}")
        if self.neg_tol is not None:
            _non_negative("neg_tol", self.neg_tol)
        _non_negative("push_margin", self.push_margin)
        _require(self.lower < self.upper, f"expected lower < upper, got {self.lower} >= {self.upper}")


# How the collision-set sampler steps (GeometryConfig.walk).
GEOMETRY_WALKS: tuple[str, ...] = ("billiard", "hit-and-run", "coordinate")


@dataclass(frozen=True, kw_only=True)
class GeometryConfig:
    """How an exact collision set is measured (:mod:`collide.piecewise.geometry`).

    Sizes, which need no mixing: the inscribed ball (one LP) and widths along directions
    uniform on the set's affine hull (two LPs each). Directions are added, from
    ``n_directions`` up to ``max_directions``, until the mean width's standard error is
    at most ``width_rel_se`` of it (on the MNIST MLP's ``relu1``: 8 directions give 0.9%).

    Samples: ``n_samples`` points of the set from ``chains`` chains of a walk (``walk``:
    ``billiard``, runs of mean length ``trajectory`` x √k in the rounded coordinates that
    reflect off the facets, a trajectory past ``max_reflections`` rejected; or
    ``hit-and-run``, a draw every ``thin`` steps; or ``coordinate`` hit-and-run) after
    ``rounding`` (the Dikin ellipsoid at the analytic centre, then ``adapt_rounds`` rounds
    of pooled-covariance shaping within the ``burn_in`` draws). The walk runs until every
    reported statistic (distance to the target, pairwise distance, projections on the
    width directions) has rank-normalised split-R̂ ≤ ``rhat_max`` and bulk ESS ≥
    ``ess_min``, checked every ``check_every`` draws, or until ``max_draws`` draws per
    chain; ``max_seconds`` (0: none) caps the whole measurement's wall clock, the one
    setting that can make a result depend on the machine. A set that did not converge
    keeps its samples (points of the set all the same) but reports NaN for their
    statistics, with the reason.

    Defaults chosen on the MNIST MLP's ``relu1`` set of the first test 7
    (``benchmarks/sampler.json``): the billiard walk in the Dikin ellipsoid's coordinates
    mixed best of the walks tried (against hit-and-run with a pilot covariance, and
    hit-and-run after Dikin and covariance rounding), and converged after several hundred
    draws a chain; covariance rounding from a few chains' draws only slowed it.
    ``max_draws`` keeps a default run's sampling short, which is not enough to converge
    there: such a set reports NaN sample statistics with the reason.
    ``max_draws=1500, max_seconds=600`` converges it.
    ``max_entries`` bounds rows x free dimensions of the dense constraint matrix.

    ``sizes_only`` measures the radius and the dimension alone, the sizes a screen of
    many inputs reads (one LP, about a third of a set's time with four width directions
    on the MNIST MLP's ``relu1``): no widths (mean width NaN) and no samples (their
    statistics NaN, with the reason). A set of one point still has width 0.

    Attributes:
        n_samples: points of the collision set sampled.
        chains: independent chains of the walk (R̂ compares them).
        burn_in: draws per chain discarded before sampling.
        thin: hit-and-run steps per kept draw.
        rounding: round the set by the Dikin ellipsoid at its analytic centre before walking.
        walk: billiard, hit-and-run or coordinate (hit-and-run along coordinates).
        trajectory: mean billiard trajectory length, in units of √k in the rounded coordinates.
        max_reflections: reflections after which a billiard trajectory is rejected.
        adapt_rounds: rounds of pooled-covariance shaping within the burn-in.
        n_directions: width directions measured first.
        max_directions: the most width directions measured.
        width_rel_se: standard error of the mean width, relative to it, that stops adding directions.
        max_draws: the most draws per chain.
        max_seconds: wall-clock limit of the whole measurement (0: none; makes results depend on the machine).
        check_every: draws between convergence checks.
        rhat_max: largest rank-normalised split-R̂ that counts as converged.
        ess_min: smallest bulk effective sample size that counts as converged.
        seed: seeds the chains' starts and steps, and the width directions.
        lower: smallest input value (the box that bounds the set).
        upper: largest input value.
        max_entries: the most entries (rows x free dimensions) of the dense constraint matrix.
        sizes_only: measure the radius and the dimension only (a screen): no widths, no samples.
    """

    n_samples: int = 2000
    chains: int = 8
    burn_in: int = 20
    thin: int = 10
    rounding: bool = True
    walk: str = "billiard"
    trajectory: float = 2.0
    max_reflections: int = 100_000
    adapt_rounds: int = 0
    n_directions: int = 8
    max_directions: int = 64
    width_rel_se: float = 0.05
    max_draws: int = 150
    max_seconds: float = 120.0
    check_every: int = 50
    rhat_max: float = 1.01
    ess_min: float = 400.0
    seed: int = 0
    lower: float = 0.0
    upper: float = 1.0
    max_entries: int = 50_000_000
    sizes_only: bool = field(default=False, metadata=UNLESS_DEFAULT)

    def __post_init__(self) -> None:
        _require(self.n_samples >= 1, f"expected geometry.n_samples >= 1, got {self.n_samples}")
        _require(self.chains >= 2, f"expected geometry.chains >= 2 (R̂ compares chains), got {self.chains}")
        _require(self.burn_in >= 0, f"expected geometry.burn_in >= 0, got {self.burn_in}")
        _require(self.thin >= 1, f"expected geometry.thin >= 1, got {self.thin}")
        _require(self.walk in GEOMETRY_WALKS, f"expected geometry.walk in {GEOMETRY_WALKS}, got {self.walk!r}")
        _require(self.adapt_rounds >= 0, f"expected geometry.adapt_rounds >= 0, got {self.adapt_rounds}")
        _require(self.n_directions >= 1, f"expected geometry.n_directions >= 1, got {self.n_directions}")
        _require(self.max_directions >= self.n_directions,
                 f"expected geometry.max_directions >= n_directions ({self.n_directions}), got {self.max_directions}")
        _require(self.width_rel_se > 0, f"expected geometry.width_rel_se > 0, got {self.width_rel_se}")
        _require(self.trajectory > 0, f"expected geometry.trajectory > 0, got {self.trajectory}")
        _require(self.max_reflections >= 1, f"expected geometry.max_reflections >= 1, got {self.max_reflections}")
        _require(self.max_draws >= 1, f"expected geometry.max_draws >= 1, got {self.max_draws}")
        _require(self.max_seconds >= 0, f"expected geometry.max_seconds >= 0 (0: no limit), got {self.max_seconds}")
        _require(self.check_every >= 1, f"expected geometry.check_every >= 1, got {self.check_every}")
        _require(self.rhat_max >= 1, f"expected geometry.rhat_max >= 1, got {self.rhat_max}")
        _require(self.ess_min >= 0, f"expected geometry.ess_min >= 0, got {self.ess_min}")
        _require(self.lower < self.upper, f"expected geometry.lower < upper, got {self.lower} and {self.upper}")
        _require(self.max_entries >= 1, f"expected geometry.max_entries >= 1, got {self.max_entries}")


@dataclass(frozen=True)
class ExactConfig:
    """The exact (linear programming) vertex solver, beyond the paper.

    ``proximity`` weighs the L1 distance to the init, as a multiple of the mean absolute
    coefficient of the pushed unit; 0 ignores the init.

    A vertex is valid when the LP is ``optimal`` and, recomputed in float64 from the
    stored float32 vertex, its relative feature error is at most ``rel_tol``, its
    non-positive units at most ``neg_tol``, and its pushed unit ``push_margin`` x
    max|ỹᵗ| below the target's (a large ``proximity`` can pin a vertex to its init).

    The margin is smaller than the gradient solver's: an LP vertex is an exact optimum,
    so any move well above rounding (float32 storage shifts a unit by about 1e-7 x
    max|ỹᵗ|) is a real, distinct point of the collision set, and the margin only has to
    reject a vertex that stayed on the target. Deeper in a network the target's region
    can be small: LeNet-5 at ``relu3`` lets its first pushed unit fall only about
    1% of max|ỹᵗ| below the target's even without the proximity term.

    ``max_entries`` bounds the LP's constraint matrix (rows x input coordinates, dense in
    float64: the Jacobian of a deep layer fills every entry). A larger problem is
    refused before any work, naming its size and the largest input it would take.

    ``lp_solver``: ``highs`` (HiGHS through highspy, inequality rows added where violated) or
    ``linprog`` (scipy, every row; the reference it is measured against); see
    :mod:`collide.piecewise.lp`. ``threads``: how many vertex LPs run at once (0: one per
    core the job may take: every core, or on a Dask worker its share of its host's,
    :func:`collide.workers.job_cores`; or all of a polytope's at once where they are
    small, :data:`collide.solvers.exact.AT_ONCE_ENTRIES`); the vertices do not depend on
    it, so it is left out of experiment digests.

    Attributes:
        proximity: weight of the L1 distance to the init, as a multiple of the pushed unit's mean |coefficient| (0:
            none).
        feasibility_tol: the LP solver's primal feasibility tolerance.
        region_tol: largest gap (x max|ỹᵗ|, the target's largest pre-activation at the layer) between a
            vertex's float64 forward pass and its linear piece before it counts as having left the region.
        rel_tol: largest relative feature error (float64, from the stored vertex) of a valid vertex.
        neg_tol: largest value of the target's non-positive units for a valid vertex.
        push_margin: how far below the target's value (x max|ỹᵗ|) the pushed unit must end for a valid vertex.
        lower: smallest input value (the LP's box).
        upper: largest input value.
        max_entries: the most entries (rows x input coordinates) of the LP's constraint matrix.
        lp_solver: highs (HiGHS, rows added where violated) or linprog (scipy, every row).
        threads: how many vertex LPs run at once (0: one per core the job may take, all at once where small; not
            in digests).
    """

    proximity: float = 0.5
    feasibility_tol: float = 1e-9
    region_tol: float = 1e-5
    rel_tol: float = 1e-6
    neg_tol: float = 1e-6
    push_margin: float = 1e-4
    lower: float = 0.0
    upper: float = 1.0
    max_entries: int = 100_000_000
    lp_solver: str = "highs"
    threads: int = field(default=0, metadata={"digest": False})

    def __post_init__(self) -> None:
        _require(self.max_entries >= 1, f"expected max_entries >= 1, got {self.max_entries}")
        _require(self.lp_solver in LP_SOLVERS, f"expected lp_solver in {LP_SOLVERS}, got {self.lp_solver!r}")
        _require(self.threads >= 0, f"expected threads >= 0 (0: one per core), got {self.threads}")
        _non_negative("proximity", self.proximity)
        _positive("rel_tol", self.rel_tol)
        _non_negative("neg_tol", self.neg_tol)
        _non_negative("push_margin", self.push_margin)
        _positive("feasibility_tol", self.feasibility_tol)
        _positive("region_tol", self.region_tol)
        _require(self.lower < self.upper, f"expected lower < upper, got {self.lower} >= {self.upper}")


@dataclass(frozen=True)
class SampleConfig:
    """How points are drawn from a polytope: convex combinations of its vertices.

    Attributes:
        n_samples: random points drawn from each polytope and classified.
        sampler: stick (the authors' stick-breaking weights) or dirichlet (uniform on the simplex).
        seed: seeds the samples' weights.
        n_dataset_pairs: random image pairs for the dataset's average distance (when too many images for all pairs).
    """

    n_samples: int = 2000
    sampler: Sampler = "stick"
    seed: int = 0
    n_dataset_pairs: int = 2000

    def __post_init__(self) -> None:
        _require(self.n_samples >= 1, f"expected n_samples >= 1, got {self.n_samples}")
        _choice("sampler", self.sampler, SAMPLERS)
        _require(self.n_dataset_pairs >= 1, f"expected n_dataset_pairs >= 1, got {self.n_dataset_pairs}")


@dataclass(frozen=True)
class RowSpec:
    """One polytope of a table: how its vertices are found and where they start."""

    method: Method
    init: Init

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("init", self.init, INITS)


DEFAULT_ROWS = (
    RowSpec("gradient", "target"),
    RowSpec("gradient", "other"),
    RowSpec("exact", "target"),
    RowSpec("exact", "other"),
    RowSpec("paper", "target"),
    RowSpec("paper", "other"),
)


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` asked for
    where torch sees no GPU is a :class:`ConfigError` that says what to set."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} was asked for, but torch finds no usable CUDA GPU here "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): set device=auto "
                          "(a GPU where there is one, else the CPU) or device=cpu")
    return device


@dataclass(frozen=True)
class PatchConfig:
    """Sliding-window patches of a corpus (paper §4.1: 32x32 at a constant stride).

    ``share`` of each class's images is sampled (seeded) into the corpus; the store is
    written in Zarr chunks of ``images_per_chunk`` images, whole chunks per Dask task.

    Attributes:
        size: patch side in pixels.
        stride: step between patch positions in pixels.
        share: share of each class's images sampled into the patch corpus.
        images_per_chunk: images per Zarr chunk (and per Dask task).
        seed: seeds which images are sampled.
    """

    size: int = 8
    stride: int = 4
    share: float = 0.1
    images_per_chunk: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.size >= 1, f"expected patch size >= 1, got {self.size}")
        _require(self.stride >= 1, f"expected patch stride >= 1, got {self.stride}")
        _require(0 < self.share <= 1, f"expected 0 < share <= 1, got {self.share}")
        _require(self.images_per_chunk >= 1, f"expected images_per_chunk >= 1, got {self.images_per_chunk}")


@dataclass(frozen=True)
class KnnConfig:
    """Approximate kNN over the patch store (pynndescent), checked against exact search.

    ``n_components`` > 0 indexes a PCA projection; answers are re-ranked with exact
    distances in the full space. ``shards`` > 1 builds one index per slice of the store
    and merges their answers.

    ``method="auto"`` searches exactly (brute force, same answers format) when the store
    holds fewer than ``exact_below`` patches, else builds the pynndescent index: for a
    small store, exact search of a few images' windows takes milliseconds, while the
    index's first build in a process pays numba's compile (benchmarks/results.md, kNN:
    exact search of one image's windows stays below the index's build time up to 1e6
    patches).

    ``n_jobs``, ``n_trees``, ``n_iters``, ``max_candidates`` and ``low_memory`` go to
    pynndescent's ``NNDescent`` (0: pynndescent's own default, which grows with the
    store); benchmarks/results.md, kNN build, has the grid they were chosen from.

    Attributes:
        k: neighbours returned per query patch.
        n_neighbors: pynndescent's graph degree.
        n_components: PCA dimensions the index is built on (0: the full space).
        shards: indexes built over slices of the store, their answers merged.
        rerank: with n_components, k x rerank candidates are re-ranked by exact distance.
        epsilon: pynndescent's search breadth (larger: more accurate, slower).
        seed: seeds pynndescent and the PCA's sample of patches.
        method: auto (exact below exact_below patches, else pynndescent), exact or pynndescent.
        exact_below: store size under which auto searches exactly.
        n_jobs: pynndescent's threads.
        n_trees: pynndescent's random projection trees (0: its default).
        n_iters: pynndescent's NN-descent iterations (0: its default).
        max_candidates: pynndescent's candidates per iteration (0: its default).
        low_memory: pynndescent's low-memory build.
    """

    k: int = 10
    n_neighbors: int = 20
    n_components: int = 0
    shards: int = 1
    rerank: int = 3
    epsilon: float = 0.3
    seed: int = 0
    method: KnnMethod = "auto"
    exact_below: int = 100_000
    n_jobs: int = 2
    n_trees: int = 8
    n_iters: int = 0
    max_candidates: int = 0
    low_memory: bool = False

    def __post_init__(self) -> None:
        _choice("method", self.method, KNN_METHODS)
        _require(self.n_jobs >= 1, f"expected n_jobs >= 1, got {self.n_jobs}")
        for name in ("n_trees", "n_iters", "max_candidates"):
            _non_negative(name, getattr(self, name))
        _require(self.exact_below >= 0, f"expected exact_below >= 0, got {self.exact_below}")
        _require(self.k >= 1, f"expected k >= 1, got {self.k}")
        _non_negative("epsilon", self.epsilon)
        _require(self.n_neighbors >= 2, f"expected n_neighbors >= 2, got {self.n_neighbors}")
        _require(self.n_components >= 0, f"expected n_components >= 0, got {self.n_components}")
        _require(self.shards >= 1, f"expected shards >= 1, got {self.shards}")
        _require(self.rerank >= 1, f"expected rerank >= 1, got {self.rerank}")
