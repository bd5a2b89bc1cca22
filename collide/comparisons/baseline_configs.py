"""The baselines' settings: how many points each draws, from which seed, and how the
code inversion optimises. Apart from :mod:`collide.comparisons.baselines` (which imports
torch) so that an experiment's config can be built and refused without it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from collide.checks import non_negative as _non_negative
from collide.checks import positive as _positive
from collide.checks import require as _require
from collide.errors import ConfigError

__all__ = ["NULL_SPACE_RTOL", "BallConfig", "InversionConfig", "NullSpaceConfig", "check_box", "check_count"]

# Singular values of W_P below this times the largest count as zero. A float64 Jacobian
# of a float32 layer is exact to ~1e-16 relative, so rounding alone leaves singular values
# near 1e-16 x the largest (x sqrt(d)); a trained layer's smallest real one is far above
# 1e-10 (the MNIST MLP's fc1 rows of a target's positive units: about 1e-2 of the
# largest). Between the two the rank does not depend on the cut-off.
NULL_SPACE_RTOL = 1e-10


def check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"expected n >= 1 points, got {n!r}")


def check_box(lower: float, upper: float) -> None:
    _require(math.isfinite(lower) and math.isfinite(upper) and lower < upper,
             f"expected finite lower < upper, got [{lower}, {upper}]")


@dataclass(frozen=True, kw_only=True)
class BallConfig:
    """The random-ball control: ``n`` points, seeded.

    Attributes:
        n: points drawn in the ball.
        seed: seeds the points.
    """

    n: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        check_count(self.n)


@dataclass(frozen=True, kw_only=True)
class NullSpaceConfig:
    """The null-space construction: ``n`` points, seeded; ``rank_rtol`` the SVD cut-off.

    Attributes:
        n: points drawn in the null space.
        seed: seeds the points.
        rank_rtol: singular values below this share of the largest count as zero (the SVD's rank cut-off).
    """

    n: int = 2000
    seed: int = 0
    rank_rtol: float = NULL_SPACE_RTOL

    def __post_init__(self) -> None:
        check_count(self.n)
        _require(0 < self.rank_rtol < 1, f"expected 0 < rank_rtol < 1, got {self.rank_rtol}")


@dataclass(frozen=True, kw_only=True)
class InversionConfig:
    """Code inversion: projected Adam for ``steps`` steps, its rate decaying
    geometrically from ``lr`` to ``lr_end``; ``tv_weight`` is λ_TV.

    Defaults, from a grid on the MNIST MLP (test image 0, a 7, inverted from test image 1,
    a 2; feature error at the layer / L2 distance to the init, 1000 steps unless said):

    ======  ==========================  ============  ============  ============  ============
    layer   lr -> lr_end                λ_TV = 0      1e-4          1e-3          3e-3 (1e-2)
    ======  ==========================  ============  ============  ============  ============
    relu1   0.02 -> 2e-4                0.44 / 9.1    0.21 / 9.6    0.13 / 10.2   (0.42 / 9.5)
    relu1   0.05 -> 1e-4                0.35 / 11.1   0.21 / 10.3   0.095 / 10.6  0.20 / 10.1
    relu1   0.005 -> 1e-4               0.64 / 7.5    0.65 / 7.2    0.65 / 7.0    0.58 / 7.8
    relu1   0.02 -> 1e-4, 3000 steps    0.33 / 10.1   0.070 / 10.6  0.087 / 10.6  0.21 / 10.1
    relu2   0.02 -> 2e-4                0.13 / 8.6    0.13 / 7.7    0.12 / 8.9    (0.27 / 9.4)
    relu2   0.005 -> 1e-4               0.18 / 6.1    0.19 / 5.9    0.19 / 6.4    0.21 / 7.6
    ======  ==========================  ============  ============  ============  ============

    No setting collides: a unit the target has positive and the point has negative passes
    no gradient through the ReLU, so the loss stalls well above 0 (the inversions end at
    feature errors of 0.07-0.7). The TV prior helps by pulling the point towards a smooth
    digit (the target's: at relu1 and λ_TV = 1e-3 the point ends 2.4-3.4 from the target,
    about 10 from the init); 1e-2 smooths more than the features allow. Small rates stall
    first. Chosen: ``lr`` 0.05 decaying to 1e-4 over 1000 steps, λ_TV = 1e-3 (the lowest
    error at relu1 in 1000 steps; at relu2 λ_TV up to 1e-3 barely matters; 3000 steps
    gain little for three times the time).
    ``init_noise`` adds seeded uniform noise of that size to the init (clamped to the box;
    0: start at the init itself, and the seed is unused).

    Attributes:
        steps: Adam steps of the inversion.
        lr: the learning rate at the first step.
        lr_end: the learning rate at the last step (geometric decay from lr).
        tv_weight: λ_TV, the weight of the total-variation prior.
        init_noise: size of the seeded uniform noise added to the init (0: none).
        seed: seeds the init's noise.
        lower: smallest input value (each step projects onto the box).
        upper: largest input value.
    """

    steps: int = 1000
    lr: float = 0.05
    lr_end: float = 1e-4
    tv_weight: float = 1e-3
    init_noise: float = 0.0
    seed: int = 0
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        _require(isinstance(self.steps, int) and self.steps >= 1, f"expected steps >= 1, got {self.steps!r}")
        _positive("lr", self.lr)
        _positive("lr_end", self.lr_end)
        _non_negative("tv_weight", self.tv_weight)
        _non_negative("init_noise", self.init_noise)
        check_box(self.lower, self.upper)
