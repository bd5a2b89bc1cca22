"""Evaluating stored polytopes, for any experiment.

Everything needed is in the row group: the vertices and target, and in the attrs the
model source (verified by hash), the layer, the dataset's average distance and the
pixel scale that distances are reported in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from collide.config import SampleConfig
from collide.errors import DataError
from collide.models import load_model_source
from collide.objective import feature_rel_error, max_nonpositive_violation
from collide.polytope import avg_pairwise_distance, combine, evaluate, sample_weights
from collide.store import read_row, write_row
from collide.taps import preactivation

# Row attrs copied into the table as they are, when present.
_PASS_THROUGH = (
    "init", "loss", "target_index", "init_index", "test_accuracy", "weights", "knn_recall", "knn_k",
    "n_patches", "index_build_seconds", "knn_query_seconds", "exact_query_seconds", "target_path", "init_path",
)


@torch.no_grad()
def evaluate_row(
    results_root: str | Path, experiment: str, row: int, *, sample: SampleConfig, device: str = "cpu"
) -> dict[str, Any]:
    """Sample the row's polytope, classify the samples, store them and the metrics.

    Returns:
        The row's table record (the storage contract's columns and more).
    """
    arrays, attrs = read_row(results_root, experiment, row)
    model = load_model_source(attrs["model_source"]).to(device).eval()
    vertices = torch.from_numpy(arrays["vertices"])
    target = torch.from_numpy(arrays["target"])
    usable = torch.isfinite(vertices.flatten(1)).all(1)
    good = vertices[usable]
    if len(good) == 0:
        raise DataError(f"row {row} has no usable vertex (solver outcomes {attrs['solver']['outcomes']})")
    gen = torch.Generator().manual_seed(sample.seed + row)
    w = sample_weights(sample.n_samples, len(good), sampler=sample.sampler, generator=gen)
    samples = combine(w, good)
    ev = evaluate(model, samples, target, device=device)
    layer = attrs["layer"]
    t_pre = preactivation(model, target.unsqueeze(0).to(device), layer).cpu()
    v_pre = preactivation(model, good.to(device), layer).cpu()
    s_rel = torch.cat([
        feature_rel_error(preactivation(model, samples[i : i + 250].to(device), layer).cpu(), t_pre)
        for i in range(0, len(samples), 250)
    ])
    scale = float(attrs.get("pixel_scale", 1.0))
    full_w = np.zeros((len(w), len(vertices)), dtype=np.float32)
    full_w[:, usable.numpy()] = w.numpy()
    solver = attrs["solver"]
    metrics: dict[str, Any] = {
        "experiment": experiment,
        "row": row,
        "method": attrs["method"],
        "model": attrs["model"],
        "layer": layer,
        "n_vertices": int(len(good)),
        "n_samples": sample.n_samples,
        "success_rate": ev.success_rate,
        "target_top_prob": ev.target_top_prob,
        "samples_top_prob": ev.samples_top_prob,
        "dataset_avg_distance": float(attrs["dataset_avg_distance"]),
        "vertex_avg_distance": avg_pairwise_distance(good) * scale,
        "max_feature_rel_error": float(feature_rel_error(v_pre, t_pre).max()),
        "max_nonpositive": float(max_nonpositive_violation(v_pre, t_pre).max()),
        "samples_max_feature_rel_error": float(s_rel.max()),
        "sampler": sample.sampler,
        "target_class": ev.target_class,
        "pixel_scale": scale,
        "model_sha256": attrs["model_source"].get("sha256", ""),
        "random_weights": bool(attrs["model_source"].get("random", False)),
        "solver_seconds": solver["seconds"],
        "converged": solver["converged"],
        "outcomes": ",".join(solver["outcomes"]),
        "input_dim": solver.get("input_dim", int(target.numel())),
        "n_positive": solver.get("n_positive", int((t_pre > 0).sum())),
        "rank_positive": solver.get("rank_positive", -1),
        "dim_bound": solver.get("dim_bound", -1),
        "config_digest": attrs["config_digest"],
    }
    metrics.update({k: attrs[k] for k in _PASS_THROUGH if k in attrs})
    write_row(
        results_root, experiment, row,
        {"sample_weights": full_w, "sample_pred": ev.sample_pred.numpy().astype(np.int64),
         "sample_prob": ev.sample_prob.numpy().astype(np.float32)},
        {"target_class": ev.target_class, "metrics": metrics},
        keep_existing=True,
    )
    return metrics


def evaluate_experiment_row(row: int, *, config: Any) -> dict[str, Any]:
    """:func:`evaluate_row` for an experiment config (its results root, name, sampler, device)."""
    from collide.config import resolve_device

    return evaluate_row(config.results_root, config.name, row, sample=config.sample,
                        device=resolve_device(config.device))


def write_experiment_outputs(*, config: Any) -> dict[str, Any]:
    """The experiment's table and figure, rebuilt from its Zarr store alone."""
    from collide import tables

    return tables.write_outputs(config.results_root, config.name)
