"""The layer profile's config (:mod:`collide.experiments.profile`): every ReLU layer of
the MNIST architectures. Imports no torch (the layers of an architecture are read from
its model only when asked for)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from collide.checks import distinct, require
from collide.config import ARCHITECTURES, GeometryConfig, RowSpec
from collide.experiments.configs.mnist import ARCH_RELUS, INPUT_SHAPE, MnistExperiment

PROFILE_ROWS = (RowSpec("gradient", "target"), RowSpec("exact", "target"))


@dataclass(frozen=True, kw_only=True)
class ProfileExperiment(MnistExperiment):
    """Every ReLU layer of every architecture in ``archs``, for ``targets`` targets.

    Rows run architecture by architecture, layer by layer (forward order), target by
    target, ``rows`` within each. ``train`` is the training of every architecture (its
    ``arch`` is replaced by each of ``archs``). The collision sets use ``geometry``,
    whose default here is lighter than the MNIST experiment's (500 samples of 25 chains,
    4 width directions): LeNet-5's deeper sets carry ~9,000 activation-region rows, which
    every LP round and every step of every chain touches.

    Attributes:
        archs: the architectures profiled, each at every ReLU layer.
        targets: targets per architecture and layer (the first correctly classified test images of target_label).
        rows: the rows per target, layer and architecture.
        train: how every architecture is trained (its arch is replaced by each of archs).
        geometry: how each exact row's collision set is measured (lighter than the MNIST experiment's).
    """

    name: str = "profile"
    archs: tuple[str, ...] = ("mlp", "lenet5")
    targets: int = 2
    rows: tuple[RowSpec, ...] = PROFILE_ROWS
    geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(n_samples=500, chains=25,
                                                                            n_directions=4))

    def __post_init__(self) -> None:
        super().__post_init__()
        distinct("archs", self.archs)
        unknown = [a for a in self.archs if a not in ARCHITECTURES]
        require(not unknown, f"unknown archs {unknown}: expected some of {ARCHITECTURES}")
        require(self.targets >= 1, f"expected targets >= 1, got {self.targets}")
        require(self.targets_per_class == 0, "the profile picks its targets with targets, not targets_per_class")

    def digest_layer(self) -> str:
        return "all"

    def listed_layers(self) -> list[str] | None:
        if not all(a in ARCH_RELUS for a in self.archs):
            return None
        return [f"{a}:{layer}" for a in self.archs for layer in ARCH_RELUS[a]]

    @property
    def n_targets(self) -> int:
        return self.targets

    @property
    def n_rows(self) -> int:
        return sum(len(arch_layers(a)) for a in self.archs) * self.n_targets * len(self.rows)

    def arch_config(self, arch: str) -> ProfileExperiment:
        """This config with ``arch`` trained: what :func:`collide.experiments.mnist.train_model` reads."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, arch=arch))


Config = ProfileExperiment


def arch_layers(arch: str) -> list[str]:
    """The ReLU layers of ``arch``, in forward order."""
    import torch  # a profile's row count needs the model; building and refusing its config does not

    from collide.models.zoo import build_model
    from collide.taps import layers as taps_layers

    return [site.name for site in taps_layers(build_model(arch), torch.zeros(*INPUT_SHAPE))]
