"""A vulnerability scan: colliding polytopes for many targets of every MNIST class.

What the paper's §5 suggests auditors do. ``targets_per_class`` correctly classified
test images of each class, each with a gradient and an exact row (the MNIST
experiment's stages, fanned out by the engine), then a per-class summary: how often a
polytope exists and keeps its class, how wide it is, and the exact dimension bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from collide.experiments import mnist
from collide.experiments.configs.scan import ScanExperiment
from collide.results.figures import draw_class_summary
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, write_summary

# Files :func:`summarize` writes beyond the table and figure, as suffixes of the name
# (engine.experiment_store).
OUTPUTS = SUMMARY_OUTPUTS

NAME = "scan"
Config = ScanExperiment
layers, validate, prepare, plan, solve = mnist.layers, mnist.validate, mnist.prepare, mnist.plan, mnist.solve


def class_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (class, method) of a scan's table.

    Columns: ``targets``; ``polytopes`` (rows with at least two valid vertices) and its
    share; ``success_rate_mean``/``_min`` over those; ``vertex_avg_distance_mean``
    (the spread: mean pairwise L2 of valid vertices); ``max_feature_rel_error``;
    ``dim_upper_bound_mean``/``_min`` (exact rows: d − rank J⁺, NaN for the others).
    """
    frame = table.assign(**{"class": table["target_class"].astype(int)})
    bound = frame["dim_upper_bound"].where(frame["dim_upper_bound"] >= 0) if "dim_upper_bound" in frame else np.nan
    frame = frame.assign(dim_upper_bound=bound, polytope=frame["valid_vertices"] >= 2)
    out = frame.groupby(["class", "method"], sort=True).agg(
        targets=("row", "size"),
        polytopes=("polytope", "sum"),
        success_rate_mean=("success_rate", "mean"),
        success_rate_min=("success_rate", "min"),
        vertex_avg_distance_mean=("vertex_avg_distance", "mean"),
        max_feature_rel_error=("max_feature_rel_error", "max"),
        dim_upper_bound_mean=("dim_upper_bound", "mean"),
        dim_upper_bound_min=("dim_upper_bound", "min"),
    ).reset_index()
    out["polytopes"] = out["polytopes"].astype(int)
    out.insert(4, "polytope_share", out["polytopes"] / out["targets"])
    return out


def summarize(*, config: ScanExperiment) -> dict[str, Any]:
    """``<name>-summary.parquet`` and its figure from the scan's table; kept when unchanged."""
    store, name = ExperimentStore.of(config), config.name
    title = (f"{name}: {config.targets_per_class} target(s) per class at {config.layer}, "
             f"{config.n_vertices} vertices per polytope")
    return write_summary(store, class_summary(store.read_table()),
                         lambda frame: draw_class_summary(frame, title=title))
