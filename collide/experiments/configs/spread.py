"""The spread experiment's config (:mod:`collide.experiments.spread`): the MNIST
experiment's, repeated over training seeds and targets. Imports no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from collide.checks import distinct, require
from collide.comparisons.baseline_configs import BallConfig, NullSpaceConfig
from collide.config import GeometryConfig, RowSpec
from collide.experiments.configs.mnist import MnistExperiment

SPREAD_ROWS = (RowSpec("gradient", "target"), RowSpec("gradient", "other"), RowSpec("exact", "target"))
# The baselines a draw may add (points rows at the gradient polytope's vertex distances,
# as in :mod:`collide.experiments.baselines`): their conclusion moved with the checkpoint.
BASELINES = ("random-ball", "null-space")


@dataclass(frozen=True, kw_only=True)
class SpreadExperiment(MnistExperiment):
    """The MNIST experiment's model, solvers and sampling, repeated over ``seeds`` x targets.

    ``seeds`` are training seeds: seed ``s`` trains ``train`` with ``seed=s`` (or takes the
    shipped checkpoint of those settings, ``checkpoint``). Inherited and not used:
    ``train.seed``, ``seed``, ``target_label``, ``paper``; ``targets_per_class`` must stay 0
    and ``targets_per_batch`` 1.

    The targets are the first ``targets_per_label`` test images of each label in
    ``labels`` that every seed's model classifies correctly (the same targets under
    every seed); an ``other`` row starts from the first test image of another label, as in
    the MNIST experiment. Seed ``i`` (its position in ``seeds``), target ``k`` and row spec
    ``j`` own row ``(i * n_targets + k) * rows_per_draw + j``, one polytope job each.

    ``baselines`` (some of :data:`BASELINES`, default both) adds to every (seed, target)
    the baselines experiment's points rows, after the polytope rows: ``random-ball``
    (``ball``) and ``null-space`` (``null_space``, measured at ``layer``), at the distances
    of the gradient polytope from the target, in that row's job. Their success rates move
    with the checkpoint: here they come with their spread.

    ``geometry`` is light on samples (200 in 4 chains of at most 50 draws; the walk is not
    expected to converge, and its sample statistics come out NaN with the reason): the
    sizes summarised are LP optima, which need no mixing (the dimension, the inscribed
    radius, and the mean width over random directions, added until its standard error is
    5% of it). One set per (seed, target); the defaults are 5 seeds x 4 targets x 5 rows
    = 100 rows (every seed's checkpoint is shipped).

    Attributes:
        seeds: training seeds: seed s trains train with seed=s (or takes its shipped checkpoint).
        labels: the digits whose test images are targets.
        targets_per_label: targets per label: the first test images every seed's model classifies correctly.
        rows: the polytope rows per (seed, target).
        baselines: random-ball and/or null-space points rows added per (seed, target).
        geometry: how each exact row's collision set is measured (light on samples: sizes are LP optima).
        ball: the random-ball baseline's points.
        null_space: the null-space baseline's points.
    """

    NOT_USED: ClassVar[tuple[str, ...]] = ("train.seed", "seed", "target_label", "paper")

    name: str = "spread"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    labels: tuple[int, ...] = (7, 2)
    targets_per_label: int = 2
    rows: tuple[RowSpec, ...] = SPREAD_ROWS
    baselines: tuple[str, ...] = BASELINES
    geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(n_samples=200, chains=4, max_draws=50))
    ball: BallConfig = field(default_factory=BallConfig)
    null_space: NullSpaceConfig = field(default_factory=NullSpaceConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        distinct("seeds", self.seeds)
        require(all(s >= 0 for s in self.seeds), f"expected seeds >= 0, got {self.seeds!r}")
        distinct("labels", self.labels)
        require(all(0 <= label <= 9 for label in self.labels), f"expected labels in 0..9, got {self.labels!r}")
        require(self.targets_per_label >= 1, f"expected targets_per_label >= 1, got {self.targets_per_label}")
        require(self.targets_per_class == 0, "the spread picks its targets with labels and targets_per_label, "
                 "not targets_per_class")
        require(self.targets_per_batch == 1, "the spread solves one (seed, target, row) per job: "
                 f"expected targets_per_batch 1, got {self.targets_per_batch}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        require(not unknown, f"expected baselines from {BASELINES}, got {unknown}")
        require(len(set(self.baselines)) == len(self.baselines), f"expected distinct baselines, got {self.baselines}")
        require(not self.baselines or RowSpec("gradient", "target") in self.rows,
                 "the baselines take their distances from the gradient polytope from the target: keep the row "
                 "{method: gradient, init: target} in rows")

    @property
    def n_targets(self) -> int:
        return len(self.labels) * self.targets_per_label

    @property
    def rows_per_draw(self) -> int:
        """Rows of one (seed, target): ``rows``, then ``baselines``."""
        return len(self.rows) + len(self.baselines)

    @property
    def n_rows(self) -> int:
        return len(self.seeds) * self.n_targets * self.rows_per_draw

    def seed_config(self, seed: int) -> SpreadExperiment:
        """This config with ``train.seed`` set to ``seed``: what :func:`collide.experiments.mnist.train_model` reads."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))


Config = SpreadExperiment
