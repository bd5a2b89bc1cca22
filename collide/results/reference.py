"""The paper's published table rows, to print beside ours.

Li, Zhang and Malik (2019) report MNIST (Table 2) in [0, 1] pixels and ImageNet
(Tables 4 and 6) in 0-255 pixels. Our tables use the model's input units, [0, 1]
pixels for every experiment, so the ImageNet distances are divided by 255, here and
nowhere else (:func:`to_input_units`). Probabilities carry the digits the paper prints
(Table 2's "1.0" is rounded to one decimal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PAPER_IMAGENET_PIXEL_SCALE = 255.0  # the paper's ImageNet pixels are 0-255; ours are [0, 1]

MNIST_FIRST_LAYER = ("fc1", "relu1")  # Table 2's layer, named before or after its ReLU

REFERENCE_COLUMNS = (
    "success_rate", "target_top_prob", "samples_top_prob", "dataset_avg_distance", "vertex_avg_distance",
)


def to_input_units(distance: float | None, pixel_scale: float) -> float | None:
    """An L2 distance measured on pixels ``pixel_scale`` times ours, in our input units."""
    return None if distance is None else distance / pixel_scale


@dataclass(frozen=True)
class ReferenceRow:
    """One published row, its distances already in our input units.

    ``published_vertex_avg_distance`` keeps the printed number, to quote it.
    """

    table: str
    row: int
    setting: str
    success_rate: float
    target_top_prob: float
    samples_top_prob: float
    dataset_avg_distance: float | None  # Table 6 leaves it blank on its second row
    vertex_avg_distance: float
    published_vertex_avg_distance: float
    pixel_scale: float

    @property
    def name(self) -> str:
        return f"paper {self.table} row {self.row}"

    def values(self) -> dict[str, float | None]:
        return {c: getattr(self, c) for c in REFERENCE_COLUMNS}


def _published(
    table: str, row: int, setting: str, success: float, target_p: float, samples_p: float,
    dataset_distance: float | None, vertex_distance: float, *, pixel_scale: float,
) -> ReferenceRow:
    return ReferenceRow(
        table, row, setting, success, target_p, samples_p,
        to_input_units(dataset_distance, pixel_scale), vertex_distance / pixel_scale, vertex_distance, pixel_scale,
    )


_255 = PAPER_IMAGENET_PIXEL_SCALE
# Table 1's target: an image of the digit 7.
PAPER_MNIST_TARGET = 7
# Table 2 prints the dataset distance once for both rows: the same test set.
TABLE_2 = (
    _published("Table 2", 1, "MNIST MLP, first layer, init = target", 1.0, 1.0, 1.0, 10.21, 1.33, pixel_scale=1.0),
    _published("Table 2", 2, "MNIST MLP, first layer, init = other digit", 1.0, 1.0, 1.0, 10.21, 1.28,
               pixel_scale=1.0),
)
TABLE_4 = (
    _published("Table 4", 1, "ImageNet VGG-16 fc6, init = other image", 1.0, 0.993, 0.995, 37538.22, 4906.56,
               pixel_scale=_255),
)
TABLE_6 = (
    _published("Table 6", 1, "ImageNet VGG-16 fc6, patches, target = start image", 1.0, 0.952, 0.877, 37538.22,
               8597.34, pixel_scale=_255),
    _published("Table 6", 2, "ImageNet VGG-16 fc6, patches, target = other image", 1.0, 0.999, 0.800, None,
               9587.92, pixel_scale=_255),
)


def _patch_kind(record: Mapping[str, Any]) -> str | None:
    """``self`` (the start image is the target) or ``other``, however the row recorded it."""
    for key in ("row_kind", "init"):
        if record.get(key) in ("self", "other"):
            return str(record[key])
    target, start = record.get("target_index"), record.get("init_index")
    if _present(target) and _present(start):
        return "self" if target == start else "other"
    return None


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def reference_for(record: Mapping[str, Any]) -> ReferenceRow | None:
    """The published row that a table row reproduces, or None where the paper has none.

    Only the paper's settings match: polytopes of the MNIST MLP at its first layer around
    a 7 (any method, init ``target`` or ``other``), VGG-16 with ImageNet weights at fc6
    started from another image, and patch compositions there. Random weights, other layers,
    LeNet-5, MNIST patches, another digit as the target, a scan's rows (its most blind
    examples) and rows of points (a baseline's, the frontier's) have no reference.
    """
    model, method, init, layer = (record.get(k) for k in ("model", "method", "init", "layer"))
    if _present(record.get("n_vertices")) and int(record["n_vertices"]) == 0:
        return None  # points, not a polytope's vertices: nothing the paper measured
    if _present(record.get("scan_rank_by")):
        return None  # a scan's most blind example of its batch, whatever its digit: not the paper's target
    dataset = record.get("dataset")
    if _present(dataset) and str(dataset) not in ("MNIST", "ImageNet", ""):
        return None  # the paper measured MNIST and ImageNet only
    random = record.get("random_weights")
    if (_present(random) and bool(random)) or "random-weights" in str(record.get("flags") or ""):
        return None
    if model == "mnist-mlp" and layer in MNIST_FIRST_LAYER and method != "patches":
        # The class the model gives the target: a 7 for every row whose target was chosen as
        # a correctly classified 7 (the MNIST experiments'); any other target has no row.
        target = record.get("target_class")
        if _present(target) and int(target) != PAPER_MNIST_TARGET:
            return None
        return {"target": TABLE_2[0], "other": TABLE_2[1]}.get(str(init))
    if model != "vgg16-imagenet" or layer != "fc6":
        return None
    if method == "patches":
        return {"self": TABLE_6[0], "other": TABLE_6[1]}.get(_patch_kind(record) or "")
    return TABLE_4[0] if init == "other" else None
