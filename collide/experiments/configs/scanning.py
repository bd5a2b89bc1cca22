"""What the §5 experiments that scan examples share (:mod:`collide.experiments.mislabelled`,
:mod:`collide.experiments.thin`): training seeds, and how each scanned example is
measured (:class:`collide.audit.ScanConfig`'s settings, here without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from collide.checks import distinct, require
from collide.config import GeometryConfig, GradientConfig, RowSpec
from collide.experiments.configs.mnist import MnistExperiment

# One row per training seed: the gradient polytope of the example the scan ranked first.
SCAN_ROW = (RowSpec("gradient", "target"),)
EXACT = ("auto", "always", "never")


@dataclass(frozen=True, kw_only=True)
class ScannedExperiment(MnistExperiment):
    """A scan (:func:`collide.scan`) of some MNIST examples under one model per training seed.

    Seed ``seeds[i]`` owns row ``i``: the gradient polytope of the example its scan
    ranked most blind, evaluated like any row, with every scanned example's sizes and
    scores stored beside it (arrays ``scan_<column>``); ``summarize`` reads those.

    Attributes:
        seeds: training seeds: one model and one scan per seed.
        gradient: the gradient solver of every scanned example's polytope (and of the row's).
        geometry: the exact set's settings for each scanned example (radius; widths only with certify).
        exact_sizes: measure each example's exact set (dimension, inscribed radius): auto, always or never.
        certify: the mean width of the k most and k least blind examples of each scan (0: none).
        chunk: examples per solver batch and per stored scan file.
        subset_seed: seeds which examples are scanned (with the training seed added).
        n_boot: bootstrap resamples of each AUROC's interval.
        top_k: k of the precision at k.
    """

    # One model per seed, its examples the scan's, its rows gradient rows.
    NOT_USED: ClassVar[tuple[str, ...]] = ("target_label", "train.seed", "paper", "exact")

    rows: tuple[RowSpec, ...] = SCAN_ROW
    seeds: tuple[int, ...] = (0, 1, 2)
    gradient: GradientConfig = field(default_factory=lambda: GradientConfig(max_steps=1000))
    geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(
        n_samples=1, chains=2, n_directions=8, max_directions=32, width_rel_se=0.1, max_seconds=0))
    exact_sizes: str = "auto"
    certify: int = 0
    chunk: int = 25
    subset_seed: int = 0
    n_boot: int = 1000
    top_k: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.rows == SCAN_ROW, f"expected rows {SCAN_ROW} (one row per seed: the most blind example's "
                 f"gradient polytope), got {self.rows!r}")
        distinct("seeds", self.seeds)
        require(all(s >= 0 for s in self.seeds), f"expected seeds >= 0, got {self.seeds!r}")
        require(self.exact_sizes in EXACT, f"expected exact_sizes one of {EXACT}, got {self.exact_sizes!r}")
        require(self.certify >= 0, f"expected certify >= 0, got {self.certify}")
        require(self.chunk >= 1, f"expected chunk >= 1, got {self.chunk}")
        require(self.subset_seed >= 0, f"expected subset_seed >= 0, got {self.subset_seed}")
        require(self.n_boot >= 10, f"expected n_boot >= 10, got {self.n_boot}")
        require(self.top_k >= 1, f"expected top_k >= 1, got {self.top_k}")
        require(self.targets_per_class == 0, "a scan picks its examples itself: expected targets_per_class 0")

    @property
    def n_targets(self) -> int:
        return len(self.seeds)

    @property
    def n_rows(self) -> int:
        return len(self.seeds)
