"""The transfer experiment's config (:mod:`collide.experiments.transfer`): model A, as
the MNIST experiment's, and the partner models B. Imports no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from collide.checks import distinct, require
from collide.config import ARCHITECTURES, GeometryConfig, RowSpec
from collide.errors import ConfigError
from collide.experiments.configs.mnist import MnistExperiment

ROWS = ("joint-region@A", "joint-region@B", "exact-region@B", "gradient-hull@B")


def parse_partner(spec: str) -> tuple[str, int]:
    """``arch:seed`` (``mlp:1``, ``lenet5:0``) as (arch, seed)."""
    arch, _, seed = spec.partition(":")
    if arch not in ARCHITECTURES or not seed.isdigit():
        raise ConfigError(f"a partner is 'arch:seed' with arch in {ARCHITECTURES} (say 'mlp:1'), got {spec!r}")
    return arch, int(seed)


@dataclass(frozen=True, kw_only=True)
class TransferExperiment(MnistExperiment):
    """Model A is the MNIST experiment's (``train``, ``layer``); each of ``partners``
    (``arch:seed``: trained with ``train``'s other settings) is a model B at
    ``partner_layer``. Target ``k`` and partner ``p`` own the rows
    ``(k*len(partners) + p)*4`` on, in the order of :data:`ROWS`; the inherited ``rows``
    are not used. ``geometry`` measures both the joint and A's own set.

    Attributes:
        partners: models B as arch:seed, trained with train's other settings.
        partner_layer: the layer of each model B where features are compared.
        rows: inherited and not used (the rows are those of ROWS per target and partner).
        geometry: how the joint set and A's own are measured and sampled (their rows are the samples: a budget
            that mixes, else their statistics are withheld).
    """

    NOT_USED: ClassVar[tuple[str, ...]] = ("rows", "paper", "exact")  # its rows: ROWS, sets and gradient

    name: str = "transfer"
    partners: tuple[str, ...] = ("mlp:1", "lenet5:0")
    partner_layer: str = "relu1"
    rows: tuple[RowSpec, ...] = (RowSpec("gradient", "target"),)
    # The rows are the sets' samples, their statistics withheld where the chains did not
    # mix: the MNIST experiment's 150 draws a chain left the first 7's sets at R-hat 1.07-1.09,
    # 1,500 mixed them (2026-12-07, 6 minutes for the two partners on 2 cores).
    geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(max_draws=1500, max_seconds=600))

    def __post_init__(self) -> None:
        super().__post_init__()
        distinct("partners", self.partners)
        for spec in self.partners:
            arch, seed = parse_partner(spec)
            require((arch, seed) != (self.train.arch, self.train.seed),
                     f"partner {spec!r} is model A itself ({self.train.arch}, seed {self.train.seed})")

    @property
    def n_rows(self) -> int:
        return self.n_targets * len(self.partners) * len(ROWS)

    def partner_config(self, spec: str) -> MnistExperiment:
        """Where and how the partner is trained: what :func:`collide.experiments.mnist.train_model` reads."""
        arch, seed = parse_partner(spec)
        return MnistExperiment(data_root=self.data_root, checkpoint_dir=self.checkpoint_dir, device=self.device,
                                     train=dataclasses.replace(self.train, arch=arch, seed=seed))


Config = TransferExperiment
