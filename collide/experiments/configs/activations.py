"""The activations experiment's config (:mod:`collide.experiments.activations`): the MNIST
MLP trained with each hidden activation, its polytopes compared at one hidden layer over
training seeds, targets and saturation tolerances. Imports no torch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from collide.checks import distinct, require
from collide.config import RowSpec
from collide.experiments.configs.mnist import MnistExperiment

#: The MLP's hidden activations compared, each the architecture ``mlp`` (ReLU) or
#: ``mlp-NAME`` (collide.models.zoo.MLP_ACTIVATIONS; tests/models checks the two agree).
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "gelu")
#: Activations whose saturated units are their flat pieces, exactly: the saturation
#: tolerance does not apply, so each of their draws is solved once.
PIECEWISE = ("relu",)
#: The layers every architecture names alike: the Linear before each hidden activation
#: names its call (``fc1`` is ``relu1`` in the MLP, ``tanh1`` in the MLP with tanh).
HIDDEN_LAYERS = ("fc1", "fc2")
ACTIVATION_ROWS = (RowSpec("gradient", "target"),)


def arch_of(activation: str) -> str:
    """The architecture of the MLP with ``activation``: ``mlp`` for ReLU, else ``mlp-NAME``."""
    return "mlp" if activation == "relu" else f"mlp-{activation}"


@dataclass(frozen=True)
class Draw:
    """One row of the table: an activation's model (of one training seed), one target, and
    the saturation tolerance its vertices were solved under (None: a piecewise-linear
    activation, which uses its flat pieces exactly)."""

    activation: str
    seed: int
    target: int
    saturation_tol: float | None


@dataclass(frozen=True, kw_only=True)
class ActivationsExperiment(MnistExperiment):
    """The MNIST MLP with each of ``activations`` at its hidden layers, compared at ``layer``.

    Every activation's MLP has the same widths and the same training (``train``, its
    ``arch`` replaced by the activation's and its ``seed`` by each of ``seeds``; each
    checkpoint trained or reused like :func:`collide.experiments.mnist.train_model`'s).
    The targets are the first ``targets_per_label`` test images of each label in
    ``labels`` that every model classifies correctly and that have at least ``n_vertices``
    saturated units at ``layer`` under every model at the tightest tolerance (each vertex
    pushes one), the same images for every activation and seed.

    Each (activation, seed, target) is solved by the gradient method once per tolerance of
    ``saturation_tols`` (``gradient.saturation_tol`` replaced), ReLU once. Rows follow
    :attr:`draws`: activation, then seed, then target, then tolerance. Inherited and not
    used: ``train.arch``, ``train.seed``, ``seed``, ``target_label``, ``paper``,
    ``exact``, ``geometry``; ``targets_per_class`` stays 0, ``targets_per_batch`` 1.

    Attributes:
        name: names the outputs: <name>.zarr, <name>.parquet, <name>-summary.png under results_root.
        layer: the hidden layer compared, by the Linear before its activation: fc1 or fc2 (alike in every MLP).
        rows: the rows per draw: gradient rows only (from the target).
        activations: the MLP's hidden activations compared: some of relu, tanh, sigmoid, elu, gelu.
        seeds: training seeds: each activation's MLP is trained (or reused) once per seed.
        labels: the digits whose test images are targets.
        targets_per_label: targets per label: the first test images every model classifies correctly.
        saturation_tols: the saturation tolerances each smooth activation's polytopes are solved under.
    """

    NOT_USED: ClassVar[tuple[str, ...]] = ("train.arch", "train.seed", "seed", "target_label", "paper", "exact",
                                           "geometry")

    name: str = "activations"
    layer: str = "fc1"
    rows: tuple[RowSpec, ...] = ACTIVATION_ROWS
    activations: tuple[str, ...] = ACTIVATIONS
    seeds: tuple[int, ...] = (0, 1, 2)
    labels: tuple[int, ...] = (7, 2)
    targets_per_label: int = 2
    saturation_tols: tuple[float, ...] = (0.1, 0.03, 0.01, 0.003, 0.001)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [a for a in self.activations if a not in ACTIVATIONS]
        require(not unknown, f"activations: expected some of {ACTIVATIONS}, got {unknown}")
        distinct("activations", self.activations)
        distinct("seeds", self.seeds)
        require(all(s >= 0 for s in self.seeds), f"expected seeds >= 0, got {self.seeds!r}")
        distinct("labels", self.labels)
        require(all(0 <= label <= 9 for label in self.labels), f"expected labels in 0..9, got {self.labels!r}")
        require(self.targets_per_label >= 1, f"expected targets_per_label >= 1, got {self.targets_per_label}")
        distinct("saturation_tols", self.saturation_tols)
        require(all(math.isfinite(t) and t > 0 for t in self.saturation_tols),
                f"expected saturation_tols > 0, got {self.saturation_tols!r}")
        require(self.layer in HIDDEN_LAYERS,
                f"layer: expected one of {HIDDEN_LAYERS} (the Linear before a hidden activation, named alike in "
                f"every activation's MLP), got {self.layer!r}")
        require(all(r.method == "gradient" for r in self.rows),
                "rows: the activations experiment solves by the gradient method only (the exact LP addresses "
                f"piecewise-linear layers, the paper scheme's rate is tuned per model), got {self.rows!r}")
        require(self.train.arch == "mlp", "train.arch: each activation picks its own MLP (activations=...); "
                f"leave train.arch at 'mlp', got {self.train.arch!r}")
        require(self.targets_per_class == 0, "the activations experiment picks its targets with labels and "
                "targets_per_label, not targets_per_class")
        require(self.targets_per_batch == 1, "the activations experiment solves one row per job: expected "
                f"targets_per_batch 1, got {self.targets_per_batch}")

    def digest_layer(self) -> str:
        return self.layer  # an alias alike in every activation's MLP: no other spelling to share a digest with

    def listed_layers(self) -> list[str] | None:
        return list(HIDDEN_LAYERS)

    @property
    def n_targets(self) -> int:
        return len(self.labels) * self.targets_per_label

    def tolerances(self, activation: str) -> tuple[float | None, ...]:
        """The tolerances ``activation``'s polytopes are solved under (``(None,)``: once, exactly)."""
        return (None,) if activation in PIECEWISE else tuple(self.saturation_tols)

    @property
    def draws(self) -> list[Draw]:
        """Every row's draw, in row order."""
        return [Draw(a, s, k, t) for a in self.activations for s in self.seeds for k in range(self.n_targets)
                for t in self.tolerances(a)]

    @property
    def n_rows(self) -> int:
        return len(self.draws) * len(self.rows)

    def model_config(self, activation: str, seed: int) -> MnistExperiment:
        """The MNIST experiment whose classifier is ``activation``'s MLP of training seed
        ``seed`` (``train`` with its ``arch`` and ``seed`` replaced), on this config's data,
        checkpoints and device: what :func:`collide.experiments.mnist.train_model` reads."""
        return MnistExperiment(
            data_root=self.data_root, checkpoint_dir=self.checkpoint_dir, results_root=self.results_root,
            device=self.device, allow_download=self.allow_download, checkpoint=self.checkpoint,
            dataset_label=self.dataset_label, threads=self.threads,
            train=dataclasses.replace(self.train, arch=arch_of(activation), seed=seed),
        )

Config = ActivationsExperiment
