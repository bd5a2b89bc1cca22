"""One stored polytope row, as every experiment writes it: the storage contract in code.

A :class:`RowRecord` holds what the storage contract requires of every row group; a
missing field is a ``TypeError`` where the record is built, not a missing attr found
when a table is read. What one experiment adds (the patch experiment's candidates, the
ImageNet target's path) goes in ``extra_attrs`` and ``extra_arrays``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from collide.api import Geometry, Polytope
from collide.results.store import ExperimentStore


@dataclass(frozen=True, kw_only=True)
class RowRecord:
    """Shapes: vertices (V, *input); target, init (*input), float32 in input units."""

    experiment: str
    row: int
    model: str
    model_source: dict[str, Any]
    layer: str
    method: str
    init: str
    loss: str
    criterion: dict[str, Any]
    units: list[int]
    dataset_avg_distance: float
    pixel_scale: float
    solver: dict[str, Any]
    sampler: str
    config: dict[str, Any]
    config_digest: str
    vertices: np.ndarray
    target: np.ndarray
    init_image: np.ndarray
    extra_attrs: dict[str, Any] = field(default_factory=dict)
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, poly: Polytope, *, config: Any, row: int, init: str, loss: str, model: str,
           model_source: dict[str, Any], dataset_avg_distance: float, pixel_scale: float = 1.0,
           extra_attrs: dict[str, Any] | None = None, extra_arrays: dict[str, np.ndarray] | None = None,
           method: str | None = None) -> RowRecord:
        """The record of ``poly``, found for row ``row`` of the experiment ``config``."""
        return cls(
            experiment=config.name, row=row, model=model, model_source=model_source, layer=config.layer,
            method=method or poly.method, init=init, loss=loss, criterion=poly.criterion.to_dict(),
            units=poly.units.tolist(), dataset_avg_distance=float(dataset_avg_distance),
            pixel_scale=float(pixel_scale), solver=dict(poly.solver), sampler=config.sample.sampler,
            config=config.to_dict(), config_digest=config.digest(),
            vertices=poly.vertices.numpy().astype(np.float32), target=poly.target.numpy().astype(np.float32),
            init_image=poly.init.numpy().astype(np.float32),
            extra_attrs=dict(extra_attrs or {}), extra_arrays=dict(extra_arrays or {}),
        )

    def write(self, results_root: str | Path) -> Path:
        """The row group ``row-<row>`` of ``<experiment>.zarr``, replaced atomically."""
        attrs = {k: getattr(self, k) for k in (
            "experiment", "row", "model", "model_source", "layer", "method", "init", "loss", "criterion", "units",
            "dataset_avg_distance", "pixel_scale", "solver", "sampler", "config", "config_digest")}
        arrays = {"vertices": self.vertices, "target": self.target, "init": self.init_image, **self.extra_arrays}
        return ExperimentStore(results_root, self.experiment).write_row(self.row, arrays, {**attrs, **self.extra_attrs})


def region_fields(geometry: Geometry) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What an exact row stores of its collision set: the scalars as the ``geometry`` attr;
    as arrays, the samples (``region_samples``, inputs), the inscribed ball's centre, the
    width directions with their extreme points (float64: widths are recomputed from
    them) and, where the set is flat, the rows pinned to equality (``region_pinned``)
    with their certificate (``region_pinned_weights``, where there is one)."""
    arrays = {"region_samples": geometry.samples.numpy().astype(np.float32),
              "region_center": geometry.center.numpy(),
              "region_directions": geometry.directions.numpy(),
              "region_extremes": geometry.extremes.numpy()}
    if geometry.pinned is not None:
        arrays["region_pinned"] = np.asarray(geometry.pinned, dtype=np.int64)
    if geometry.pinned_weights is not None:
        arrays["region_pinned_weights"] = np.asarray(geometry.pinned_weights, dtype=np.float64)
    return {"geometry": geometry.to_dict()}, arrays
