"""The vulnerability scan's config (:mod:`collide.experiments.scan`): the MNIST
experiment's over many examples of a split, ranked. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from collide.checks import choice, require
from collide.config import UNLESS_DEFAULT, GeometryConfig, RowSpec
from collide.experiments.configs.mnist import MnistExperiment
from collide.usercode import split_spec

SCAN_ROWS = (RowSpec("gradient", "target"), RowSpec("exact", "target"))
SPLITS = ("test", "train")
# The sizes a scan may rank by, as its ranking names them (:mod:`collide.audit`).
RANK_SIZES = ("auto", "radius", "spread", "dim", "valid_vertices", "mean_width")


@dataclass(frozen=True, kw_only=True)
class ScanExperiment(MnistExperiment):
    """The MNIST experiment's config with the scan's defaults: examples of one ``split``
    (the first ``targets_per_class`` of each class, every one with 0, or exactly
    ``indices``), right or wrong, each with the rows ``SCAN_ROWS``, the gradient rows
    ``targets_per_batch`` targets to a solver batch; then every example ranked by
    ``rank_by`` (``<name>-ranking.parquet``) and the most and least blind shown
    (``<name>-gallery.png``). Each exact row measures its collision set as a screen:
    the inscribed radius and the dimension (one LP, ``geometry.sizes_only``), no widths
    and no samples (their statistics NaN, with the reason): a ranking reads neither,
    and four width directions took two thirds of a screened row's time (``exact_row``
    in ``benchmarks/scan.json``). ``--set geometry.sizes_only=false`` adds the mean
    width from 4 to 8 random directions, until its standard error is within a tenth of
    it. With ``certify`` k > 0 the k most and k least blind
    examples then get the full measurement (``certify_geometry``: widths to 5%, chains
    run until they mix or its budget ends) in ``<name>-certified.parquet``.

    50 per batch: a scan runs several times as many polytopes per second as with one
    target per job, within a tenth of the best batch size (benchmarks/results.md,
    "targets per batch"), while a killed scan redoes at most 50 targets' gradient rows.
    10 exact rows per job: each job's fixed cost (a Prefect task, the checkpoint and the
    images read) is paid once for ten sets, while a killed scan redoes at most ten.

    Attributes:
        rows: the rows per target (gradient and exact, from the target).
        split: the MNIST split whose examples are scanned: test or train.
        image_root: scan this folder's images instead (grey, 28 px; class folders named by their label: 0, 1, ...).
        dataset: scan the dataset your own code builds instead: package.module:factory, a function of no
            arguments returning a Dataset of (image, label), a DataLoader, or (images, labels): images 1x28x28, [0, 1].
        targets_per_class: the first n examples of every digit in the split (0: every example of the split).
        indices: exactly these examples of the split (overrides targets_per_class).
        rank_by: the size to rank by: auto (the radius where every example has an exact set, else the spread).
        gallery: the most and the least blind examples shown in the gallery, each.
        targets_per_batch: targets whose gradient rows one solver batch solves together.
        targets_per_job: targets whose exact rows one job solves, one after another.
        geometry: how each exact row's collision set is measured (a screen: sizes, next to no samples).
        certify: the full measurement of the k most and k least blind examples by the ranking (0: none).
        certify_geometry: how the certified examples' collision sets are measured.
    """

    name: str = "scan"
    rows: tuple[RowSpec, ...] = SCAN_ROWS
    split: Literal["test", "train"] = "test"
    image_root: str = field(default="", metadata=UNLESS_DEFAULT)
    dataset: str = field(default="", metadata=UNLESS_DEFAULT)
    targets_per_class: int = 3
    indices: tuple[int, ...] = ()
    # How the outputs rank and show the rows, not what a row computes: no solve key changes.
    rank_by: str = field(default="auto", metadata={"digest": False})
    gallery: int = field(default=8, metadata={"digest": False})
    targets_per_batch: int = 50
    # How rows are grouped into jobs, not what a row computes: no solve key changes.
    targets_per_job: int = field(default=10, metadata={"digest": False})
    geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(
        n_samples=1, chains=2, burn_in=0, max_draws=1, walk="hit-and-run", thin=1, rounding=False,
        n_directions=4, max_directions=8, width_rel_se=0.1, max_seconds=0, sizes_only=True))
    # The second stage reads the rows and writes an output of its own, keyed by what each
    # certified example was measured from: no row's solve key depends on it.
    certify: int = field(default=0, metadata={"digest": False})
    certify_geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(max_draws=1500, max_seconds=600),
                                             metadata={"digest": False})

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.targets_per_class >= 0, f"expected targets_per_class >= 0 (0: every example), got "
                f"{self.targets_per_class}")
        choice("split", self.split, SPLITS)
        if self.dataset:
            split_spec(self.dataset, what="dataset", forms="'package.module:factory' (a function of no arguments "
                       "returning the dataset)")
            require(not self.image_root, "give image_root or dataset, not both: each is the whole set of examples "
                    "scanned")
        choice("rank_by", self.rank_by, RANK_SIZES)
        require(all(i >= 0 for i in self.indices), f"expected indices >= 0, got {list(self.indices)}")
        require(len(set(self.indices)) == len(self.indices), f"indices repeat an example: {list(self.indices)}")
        require(self.gallery >= 1, f"expected gallery >= 1, got {self.gallery}")
        require(self.targets_per_job >= 1, f"expected targets_per_job >= 1, got {self.targets_per_job}")
        require(self.certify >= 0, f"expected certify >= 0 (0: none), got {self.certify}")
        require(not (self.rank_by == "mean_width" and self.geometry.sizes_only),
                "rank_by=mean_width, but the screen measures no widths (geometry.sizes_only=true): rank by the "
                "radius, or measure widths in every exact row with --set geometry.sizes_only=false")

    def row_spec(self, row: int) -> RowSpec:
        """How row ``row`` is found: every example repeats ``rows`` in order. How many
        examples there are is known only once the data are read (every example of a split
        or a folder, or ``indices``), so only the row's place among ``rows`` is checked."""
        require(row >= 0, f"expected row >= 0, got {row}")
        return self.rows[row % len(self.rows)]


Config = ScanExperiment
