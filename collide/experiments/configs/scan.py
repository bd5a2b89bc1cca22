"""The vulnerability scan's config (:mod:`collide.experiments.scan`): the MNIST
experiment's over many examples of a split, ranked. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from collide.checks import choice, require
from collide.config import UNLESS_DEFAULT, GeometryConfig, RowSpec
from collide.experiments.configs.mnist import MnistExperiment
from collide.usercode import split_spec

# One row per job of ``targets_per_batch`` examples: the gradient polytope of the one its
# scan ranked most blind, with every example's sizes beside it (arrays ``scan_<column>``).
SCAN_ROWS = (RowSpec("gradient", "target"),)
SPLITS = ("test", "train")
# The sizes a scan may rank by, as its ranking names them (:mod:`collide.audit`).
RANK_SIZES = ("auto", "radius", "spread", "dim", "valid_vertices", "mean_width")
EXACT_SIZES = ("auto", "always", "never")


@dataclass(frozen=True, kw_only=True)
class ScanExperiment(MnistExperiment):
    """The MNIST experiment's config with the scan's defaults: examples of one ``split``
    (the first ``targets_per_class`` of each class, every one with 0, or exactly
    ``indices``), right or wrong, screened ``targets_per_batch`` to a job by
    :func:`collide.scan`: each example's gradient polytope (its valid vertices and
    spread, all of the job's examples in one solver batch) and its exact collision set's
    dimension and inscribed radius (one LP: ``geometry``'s box and LP budget; no widths,
    no samples). A job writes one row: the gradient polytope of its most blind example,
    evaluated like any row, with every example's sizes stored beside it (arrays
    ``scan_<column>``). Then every example is ranked by ``rank_by``
    (``<name>-ranking.parquet``) and the most and least blind shown
    (``<name>-gallery.png``). With ``certify`` k > 0 the k most and k least blind
    examples get the full measurement (``certify_geometry``: widths to 5%, chains run
    until they mix or its budget ends) in ``<name>-certified.parquet``.

    Why rows of many examples: a gradient and an exact row per example (the exact
    vertices, two evaluations, two writes) cost 2.35 s an example where its ball LP took
    0.87 s (profiled over 100 test images in one process; docs/experiments/scan.md).
    100 to a job: one gradient batch of 100 runs within a tenth of the best rate
    (benchmarks/results.md, "targets per batch"), and a killed scan redoes at most 100
    examples, about a minute.

    Attributes:
        rows: one gradient row per job (the most blind example's polytope).
        split: the MNIST split whose examples are scanned: test or train.
        image_root: scan this folder's images instead (grey, 28 px; class folders named by their label: 0, 1, ...).
        dataset: scan the dataset your own code builds instead: package.module:factory, a function of no
            arguments returning a Dataset of (image, label), a DataLoader, or (images, labels): images 1x28x28, [0, 1].
        targets_per_class: the first n examples of every digit in the split (0: every example of the split).
        indices: exactly these examples of the split (overrides targets_per_class).
        rank_by: the size to rank by: auto (the radius where every example has an exact set, else the spread).
        gallery: the most and the least blind examples shown in the gallery, each.
        targets_per_batch: examples per job: one gradient solver batch, one row.
        exact_sizes: measure each example's exact set (dimension, inscribed radius): auto (where its LP fits),
            always, never.
        geometry: the exact set's box and LP budget for each example's sizes.
        certify: the full measurement of the k most and k least blind examples by the ranking (0: none).
        certify_geometry: how the certified examples' collision sets are measured.
    """

    # Its examples are the split's, its rows gradient rows: no target label, paper or exact rows.
    NOT_USED: ClassVar[tuple[str, ...]] = ("target_label", "paper", "exact")

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
    targets_per_batch: int = 100
    exact_sizes: str = "auto"
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
        require(self.rows == SCAN_ROWS, f"expected rows {SCAN_ROWS} (one row per job: its most blind example's "
                f"gradient polytope), got {self.rows!r}")
        require(self.targets_per_class >= 0, f"expected targets_per_class >= 0 (0: every example), got "
                f"{self.targets_per_class}")
        choice("split", self.split, SPLITS)
        if self.dataset:
            split_spec(self.dataset, what="dataset", forms="'package.module:factory' (a function of no arguments "
                       "returning the dataset)")
            require(not self.image_root, "give image_root or dataset, not both: each is the whole set of examples "
                    "scanned")
        choice("rank_by", self.rank_by, RANK_SIZES)
        choice("exact_sizes", self.exact_sizes, EXACT_SIZES)
        require(all(i >= 0 for i in self.indices), f"expected indices >= 0, got {list(self.indices)}")
        require(len(set(self.indices)) == len(self.indices), f"indices repeat an example: {list(self.indices)}")
        require(self.gallery >= 1, f"expected gallery >= 1, got {self.gallery}")
        require(self.certify >= 0, f"expected certify >= 0 (0: none), got {self.certify}")
        require(self.rank_by != "mean_width",
                "rank_by=mean_width, but the screen measures no widths: rank by the radius, and measure widths "
                "of the most and least blind with --set certify=K")
        require(not (self.rank_by in ("radius", "dim") and self.exact_sizes == "never"),
                f"rank_by={self.rank_by}, but exact_sizes=never measures no exact set: rank by the spread, or "
                "let exact_sizes be auto")

    def row_spec(self, row: int) -> RowSpec:
        """How row ``row`` is found: every job's row is its most blind example's gradient
        polytope. How many jobs there are is known only once the data are read."""
        require(row >= 0, f"expected row >= 0, got {row}")
        return self.rows[0]


Config = ScanExperiment
