"""An experiment's summary: a table aggregated from its main table, and its figure.

``<name>-summary.parquet`` and ``<name>-summary.png`` beside the experiment's own
outputs; both are rewritten only when the summary's values changed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from collide.results.figures import save_figure
from collide.results.store import ExperimentStore, write_table

# The outputs (suffixes of the experiment's name) of :func:`write_summary`: an experiment
# that writes a summary declares them in its ``OUTPUTS``.
SUMMARY, SUMMARY_FIGURE = "-summary.parquet", "-summary.png"
SUMMARY_OUTPUTS = (SUMMARY, SUMMARY_FIGURE)


def write_summary(store: ExperimentStore, frame: pd.DataFrame,
                  draw: Callable[[pd.DataFrame], Figure]) -> dict[str, Any]:
    """Write ``frame`` and ``draw(frame)``, unless both files already hold the same values."""
    path, figure = store.output(SUMMARY), store.output(SUMMARY_FIGURE)
    if path.is_file() and figure.is_file():
        old = pd.read_parquet(path)
        if old.shape == frame.shape and old.equals(frame):
            return {"summary": str(path), "summary_figure": str(figure), "summary_reused": True}
    save_figure(draw(frame), figure)
    write_table(frame, path)
    return {"summary": str(path), "summary_figure": str(figure), "summary_reused": False}


def summary_table(kind: str) -> str:
    """The output suffix of a second summary table, ``<experiment>-<kind>.parquet``."""
    return f"-{kind}.parquet"


def write_summary_table(store: ExperimentStore, kind: str, frame: pd.DataFrame) -> Path:
    """A second summary table, ``<experiment>-<kind>.parquet``, unless it already holds ``frame``."""
    path = store.output(summary_table(kind))
    if path.is_file():
        old = pd.read_parquet(path)
        if old.shape == frame.shape and old.equals(frame):
            return path
    return write_table(frame, path)


def baseline_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, layer) over the targets: mean success rate over the ``scored``
    targets that have one (a set whose chains did not mix has none), the largest and the
    mean feature error, the mean distance to the target and the mean spread."""
    frame = table.assign(label=table["method"] + " @ " + table["layer"])
    order = {label: k for k, label in enumerate(dict.fromkeys(frame.sort_values("row")["label"]))}
    out = frame.groupby("label", sort=False).agg(
        targets=("row", "size"), scored=("success_rate", "count"), success_rate=("success_rate", "mean"),
        max_feature_rel_error=("max_feature_rel_error", "max"),
        mean_feature_rel_error=("mean_feature_rel_error", "mean"),
        mean_distance_to_target=("mean_distance_to_target", "mean"), points_spread=("points_spread", "mean"),
    ).reset_index()
    return out.sort_values("label", key=lambda c: c.map(order)).reset_index(drop=True)
