"""The rows of the §5 experiments that scan examples (:mod:`collide.experiments.mislabelled`,
:mod:`collide.experiments.thin`): one scan per training seed, one row per scan.

:func:`scan_row` runs :func:`collide.scan` over the chosen examples under one seed's
checkpoint (each chunk kept under ``<results_root>/<name>-scans/seed-<s>/``, so a killed
job resumes where it stopped) and writes one row: the gradient polytope of the example
ranked most blind, evaluated by the engine like any row, with every scanned example's
columns as arrays ``scan_<column>`` beside it. :func:`read_scans` reads them back as one
frame, one line per (seed, example).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from collide.api import find_polytope
from collide.audit import ScanConfig, exact_sizes_reason, scan
from collide.config import resolve_device
from collide.errors import ConfigError
from collide.experiments.configs.mnist import MnistExperiment
from collide.experiments.configs.scan import ScanExperiment
from collide.experiments.configs.scanning import ScannedExperiment
from collide.experiments.contract import Progress, no_progress
from collide.models.zoo import checkpoint_source, load_checkpoint
from collide.polytope import dataset_avg_distance
from collide.results.records import RowRecord
from collide.results.store import ExperimentStore
from collide.solvers import solver_for

# The scan's columns kept with a row, as numbers (NaN where an example has none).
SCAN_COLUMNS = ("index", "label", "prediction", "confidence", "correct", "valid_vertices", "spread", "dim",
                "radius", "mean_width", "mean_width_se", "rank")
PREFIX = "scan_"
# A flat set's pinned rows and their certificate, one run of entries per example
# (``scan_pinned_count`` long, -1 where it has none), kept as one array each: not columns.
RAGGED = ("pinned", "pinned_weights", "pinned_count")

def seeds_context(seeds: dict[str, dict[str, Any]], test_images: torch.Tensor, *,
                  config: ScannedExperiment) -> dict[str, Any]:
    """A §5 scan's prepared context from each seed's checkpoint (``train_model``'s record
    with the ``examples`` to scan): the test set's mean pairwise distance, each seed's
    test accuracy, and what the rows depend on (the checkpoints and the data)."""
    require_exact_sizes(config, seeds[str(config.seeds[0])]["checkpoint"], test_images[0])
    return {"seeds": seeds,
            "dataset_avg_distance": dataset_avg_distance(test_images, n_pairs=config.sample.n_dataset_pairs,
                                                         seed=config.sample.seed),
            "test_accuracy": {f"seed-{s}": t["test_accuracy"] for s, t in seeds.items()},
            "inputs": {"checkpoint_sha256": {s: t["sha256"] for s, t in seeds.items()},
                       "data": seeds[str(config.seeds[0])]["data_digest"]}}


def screen_config(config: ScanExperiment | ScannedExperiment, *, chunk: int, certify: int = 0,
                  centers: bool = False, vertices: bool = False) -> ScanConfig:
    """How :func:`collide.scan` measures each example of a scanning experiment (its
    gradient solver, exact sizes, geometry and device), ``chunk`` examples at a time."""
    return ScanConfig(n_vertices=config.n_vertices, gradient=config.gradient, exact=config.exact_sizes,
                      certify=certify, geometry=config.geometry, chunk=chunk, device=resolve_device(config.device),
                      centers=centers, vertices=vertices)


def scan_config(config: ScannedExperiment) -> ScanConfig:
    """How a §5 scan measures each example under ``config``."""
    return screen_config(config, chunk=config.chunk, certify=config.certify)


def require_exact_sizes(config: ScanExperiment | ScannedExperiment, checkpoint: str, example: torch.Tensor) -> None:
    """Refuses ``exact_sizes=always`` where the exact set cannot be measured at the
    experiment's layer: said before any job runs, each of which would fail on its first
    example. Shapes: example (*input)"""
    if config.exact_sizes != "always":
        return
    model, _ = load_checkpoint(checkpoint)
    reason = exact_sizes_reason(model, config.layer, example, screen_config(config, chunk=1))
    if reason:
        raise ConfigError(f"exact_sizes=always, but {reason}: set exact_sizes=auto to rank by the gradient spread "
                          "where the exact set cannot be measured")


def scan_folder(config: ScannedExperiment, seed: int) -> Path:
    return Path(config.results_root) / f"{config.name}-scans" / f"seed-{seed}"

def scan_row(config: MnistExperiment, *, row: int, seed: int, checkpoint: str, images: torch.Tensor,
             labels: torch.Tensor, examples: list[int], extra: dict[str, np.ndarray], attrs: dict[str, Any],
             dataset_distance: float, measure: ScanConfig, folder: Path | None, model_name: str,
             progress: Progress = no_progress) -> pd.DataFrame:
    """Scan ``images[examples]`` (labelled ``labels[examples]``) under ``checkpoint`` as
    ``measure`` says and write row ``row``; returns the scan's frame.

    Args:
        extra: per-example columns of the experiment (one value per entry of ``examples``,
            in that order), stored as ``scan_<key>``.
        attrs: the row's attrs beyond the polytope's and the scan's.
        folder: where :func:`collide.scan` keeps each finished chunk (None: nowhere).
        model_name: the row's ``model`` (what the tables call it).
    """
    model, meta = load_checkpoint(checkpoint)
    where = torch.as_tensor(examples, dtype=torch.long)
    x, y = images[where], labels[where]
    frame = scan(model, config.layer, x, labels=y, config=measure, store=folder,
                 progress=lambda done, total: progress("scan (examples)", done, total))
    top = int(frame["index"].iloc[0])
    solver = solver_for("gradient", config.gradient)
    poly = find_polytope(model, config.layer, x[top], init=x[top], n_vertices=config.n_vertices, method=solver,
                         device=resolve_device(config.device))
    order = frame["index"].to_numpy(dtype=np.int64, copy=True)  # writable: torch indexes with it
    arrays = {f"{PREFIX}{c}": pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64)
              for c in SCAN_COLUMNS}
    arrays[f"{PREFIX}example"] = where.numpy()[order]
    arrays.update({f"{PREFIX}{k}": np.asarray(v, dtype=np.float64)[order] for k, v in extra.items()})
    if "center" in frame or "vertices" in frame:  # what the balls and vertices lie around: a referee checks each
        arrays[f"{PREFIX}image"] = x[torch.as_tensor(order)].float().numpy()
    if "center" in frame:
        d = x[0].numel()
        arrays[f"{PREFIX}center"] = np.stack([np.full(d, np.nan) if c is None else np.asarray(c, dtype=np.float64)
                                              for c in frame["center"]])
        if "pinned" in frame:  # chunks kept from before the column carry none
            arrays.update({f"{PREFIX}{k}": v for k, v in _pinned_runs(frame).items()})
    if "vertices" in frame:  # what each example's valid vertices and spread are computed from
        shape = (measure.n_vertices, *x.shape[1:])
        arrays[f"{PREFIX}vertices"] = np.stack([np.full(shape, np.nan, dtype=np.float32) if v is None else
                                                np.asarray(v, dtype=np.float32).reshape(shape)
                                                for v in frame["vertices"]])
        arrays[f"{PREFIX}vertex_valid"] = np.stack([np.zeros(measure.n_vertices, dtype=bool) if v is None else
                                                    np.asarray(v, dtype=bool) for v in frame["vertex_valid"]])
    # Why an example has no polytope or no exact set, as an index into the row's list of
    # reasons (arrays hold numbers): -1 where it has both.
    reasons = sorted({r for r in frame["reason"] if r})
    arrays[f"{PREFIX}reason"] = np.array([reasons.index(r) if r else -1 for r in frame["reason"]], dtype=np.int64)
    RowRecord.of(
        poly, config=config, row=row, init="target", model=model_name,
        model_source=checkpoint_source(checkpoint, meta["sha256"]), loss=solver.loss_name,
        dataset_avg_distance=dataset_distance,
        extra_attrs={"checkpoint": checkpoint, "checkpoint_sha256": meta["sha256"], "seed": seed,
                     "test_accuracy": meta["test_accuracy"], "target_index": int(examples[top]),
                     "init_index": int(examples[top]), "scan_rank_by": str(frame["rank_by"].iloc[0]),
                     "scan_reasons": reasons, "scan_box": [measure.geometry.lower, measure.geometry.upper],
                     **attrs},
        extra_arrays=arrays,
    ).write(config.results_root)
    return frame


def read_scans(store: ExperimentStore) -> pd.DataFrame:
    """Every row's scan as one frame: ``seed``, ``example`` (the dataset's index) and the
    scan's columns, one line per (seed, example), in rank order within each seed."""
    frames = []
    for r in store.rows():
        arrays, attrs = store.read_row(r)
        part = pd.DataFrame({k[len(PREFIX):]: v for k, v in arrays.items()
                             if k.startswith(PREFIX) and v.ndim == 1  # not the balls' centres and images
                             and k[len(PREFIX):] not in RAGGED})
        if "reason" in part:  # rows written before the reasons were kept lack it
            texts = [*attrs.get("scan_reasons", []), ""]  # code -1: none
            part["reason"] = [texts[int(c)] for c in part["reason"]]
        part.insert(0, "seed", int(attrs["seed"]))
        part.insert(1, "row", r)
        frames.append(part)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _pinned_runs(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The examples' pinned rows and weights end to end (:data:`RAGGED`), with each
    example's count: -1 where it has none, and NaN weights where its rows have no
    certificate."""
    rows, weights, counts = [], [], []
    for pinned, w in zip(frame["pinned"], frame["pinned_weights"], strict=True):
        if not isinstance(pinned, np.ndarray | list):  # None, or NaN from a chunk without the column
            counts.append(-1)
            continue
        pinned = np.asarray(pinned, dtype=np.int64)
        counts.append(len(pinned))
        rows.append(pinned)
        weights.append(np.asarray(w, dtype=np.float64) if isinstance(w, np.ndarray | list)
                       else np.full(len(pinned), np.nan))
    return {"pinned": np.concatenate([np.zeros(0, dtype=np.int64), *rows]),
            "pinned_weights": np.concatenate([np.zeros(0), *weights]),
            "pinned_count": np.asarray(counts, dtype=np.int64)}
