"""A profile across layers: how large collisions are at every ReLU layer of each model.

For the same targets (the first ``targets`` test images of ``target_label`` that
every model classifies correctly), at every ReLU layer of every architecture in
``archs``: a gradient polytope and an exact polytope from the target, the exact row
with its collision set measured (:func:`collide.api.collision_geometry`). Every row is
an ordinary polytope row of the MNIST experiment's kind, at its own model and layer,
so the engine evaluates and ``collide verify`` rechecks it like any other.

``summarize`` aggregates per (architecture, layer) and draws each quantity against
depth: N⁺, the collision set's dimension, its inscribed radius and mean width, the
gradient and exact vertex spread, and the success rate. Invariance arguments say
collisions should grow with depth; this measures whether they do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from collide._io import file_digest
from collide.api import collision_geometry, find_polytope
from collide.config import RowSpec, resolve_device
from collide.datasets.mnist import ensure_mnist, load_mnist, mnist_files
from collide.errors import ConfigError, DataError
from collide.experiments import mnist
from collide.experiments.configs.profile import ProfileExperiment, arch_layers
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.models.zoo import checkpoint_source, load_checkpoint
from collide.polytope import dataset_avg_distance
from collide.results.records import RowRecord, region_fields
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, write_summary
from collide.solvers import solver_for
from collide.taps import preactivation

# Files :func:`summarize` writes beyond the table and figure, as suffixes of the name
# (engine.experiment_store).
OUTPUTS = SUMMARY_OUTPUTS

NAME = "profile"
# The summary's quantities, as (column in the summary, title), in the figure's order.
QUANTITIES = (
    ("n_positive", "N⁺ (positive units)"),
    ("region_dim", "dim C (affine hull)"),
    ("region_radius", "inscribed radius of C"),
    ("region_mean_width", "mean width of C"),
    ("gradient_spread", "gradient vertex spread"),
    ("exact_spread", "exact vertex spread"),
    ("success_rate", "success rate (both methods)"),
)


Config = ProfileExperiment


def layers(config: ProfileExperiment) -> list[str]:
    return [f"{a}:{layer}" for a in config.archs for layer in arch_layers(a)]


def validate(*, config: ProfileExperiment) -> None:
    if any(r.init != "target" for r in config.rows):
        raise ConfigError("the profile's rows start from the target (init 'target'): one target, one set per layer")
    if any(r.method == "paper" for r in config.rows):
        raise ConfigError("the profile has no paper rows: its learning rate is tuned per model and layer")


def row_plan(config: ProfileExperiment) -> list[tuple[str, str, int, RowSpec]]:
    """(arch, layer, target number, row spec) of every row, in row order."""
    return [(a, layer, k, spec) for a in config.archs for layer in arch_layers(a)
            for k in range(config.n_targets) for spec in config.rows]


def prepare(*, config: ProfileExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """MNIST, each architecture's classifier (trained or reused), and targets that every
    one of them classifies correctly."""
    ensure_mnist(config.data_root, allow_download=config.allow_download)
    checkpoints = {a: mnist.train_model(config=config.arch_config(a), progress=progress) for a in config.archs}
    files = mnist_files(config.data_root)
    if files is None:
        raise DataError(f"MNIST not found in {config.data_root}")
    test = load_mnist(config.data_root, "test")
    right = test.labels == config.target_label
    with torch.no_grad():
        for trained in checkpoints.values():
            model, _ = load_checkpoint(trained["checkpoint"])
            right &= model(test.images).argmax(1) == test.labels
    hits = torch.nonzero(right).flatten()[: config.n_targets]
    if len(hits) < config.n_targets:
        raise DataError(f"only {len(hits)} test images of label {config.target_label} are classified correctly by "
                        f"every one of {list(config.archs)}, fewer than targets={config.targets}")
    for a, trained in checkpoints.items():
        model, _ = load_checkpoint(trained["checkpoint"])
        for layer in arch_layers(a):
            with torch.no_grad():
                nonpositive = (preactivation(model, test.images[hits], layer) <= 0).sum(1)
            if int(nonpositive.min()) < config.n_vertices:
                raise ConfigError(f"a target has {int(nonpositive.min())} non-positive units at {a}:{layer}, fewer "
                                  f"than n_vertices={config.n_vertices}: lower n_vertices")
    distance = dataset_avg_distance(test.images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    return {
        "checkpoints": {a: t["checkpoint"] for a, t in checkpoints.items()},
        "test_accuracy": {a: t["test_accuracy"] for a, t in checkpoints.items()},
        "targets": [int(h) for h in hits], "dataset_avg_distance": distance,
        "inputs": {"checkpoint_sha256": {a: t["sha256"] for a, t in checkpoints.items()},
                   "data": file_digest([files["test_images"], files["test_labels"]])},
    }


def plan(context: dict[str, Any], *, config: ProfileExperiment) -> list[Job]:
    """One job per row."""
    return [job(f"{a}-{layer}-target-{k}-{spec.method}", [row], arch=a, layer=layer,
                target_index=context["targets"][k], method=spec.method)
            for row, (a, layer, k, spec) in enumerate(row_plan(config))]


def solve(job: Job, context: dict[str, Any], *, config: ProfileExperiment,
          progress: Progress = no_progress) -> None:
    spec = job.spec
    arch, layer, method = spec["arch"], spec["layer"], spec["method"]
    checkpoint = context["checkpoints"][arch]
    model, meta = load_checkpoint(checkpoint)
    target = load_mnist(config.data_root, "test").images[spec["target_index"]]
    solver = solver_for(method, getattr(config, method))
    poly = find_polytope(model, layer, target, init=target, n_vertices=config.n_vertices, method=solver,
                         device=resolve_device(config.device),
                         progress=lambda s, n, _d: progress(f"vertices ({method})", s, n))
    attrs, arrays = region_fields(collision_geometry(
        model, layer, target, config=config.geometry)) if method == "exact" else ({}, {})
    record = RowRecord.of(
        poly, config=config, row=job.rows[0], init="target", model=mnist.model_name(context, arch),
        model_source=checkpoint_source(checkpoint, meta["sha256"]),
        loss=solver.loss_name,
        dataset_avg_distance=context["dataset_avg_distance"],
        extra_attrs={"checkpoint": checkpoint, "checkpoint_sha256": meta["sha256"], "arch": arch,
                     "depth": arch_layers(arch).index(layer) + 1, "target_index": spec["target_index"],
                     "init_index": spec["target_index"], "test_accuracy": meta["test_accuracy"], **attrs},
        extra_arrays=arrays,
    )
    dataclasses.replace(record, layer=layer).write(config.results_root)


def layer_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, layer), in depth order: each quantity's mean over the targets.

    ``*_spread`` is ``vertex_avg_distance`` (mean pairwise L2 of valid vertices) of that
    method's rows; ``success_rate`` the mean over both methods' rows; the region columns
    come from the exact rows.
    """
    frame = table.assign(depth=[int(d) for d in table["depth"]])
    keys = ["model", "depth", "layer"]
    exact = frame[frame["method"] == "exact"].groupby(keys)
    out = exact.agg(targets=("row", "size"), n_positive=("n_positive", "mean"),
                    region_dim=("region_dim", "mean"), region_dim_min=("region_dim", "min"),
                    region_free_dim=("region_free_dim", "mean"), region_radius=("region_radius", "mean"),
                    region_mean_width=("region_mean_width", "mean"),
                    region_success_rate=("region_success_rate", "mean"),
                    region_max_feature_rel_error=("region_max_feature_rel_error", "max"),
                    exact_spread=("vertex_avg_distance", "mean"),
                    exact_success_rate=("success_rate", "mean")).reset_index()
    grad = frame[frame["method"] == "gradient"].groupby(keys).agg(
        gradient_spread=("vertex_avg_distance", "mean"), gradient_success_rate=("success_rate", "mean"),
        gradient_max_feature_rel_error=("max_feature_rel_error", "max")).reset_index()
    out = out.merge(grad, on=keys, how="outer")
    out["success_rate"] = frame.groupby(keys)["success_rate"].mean().reindex(
        pd.MultiIndex.from_frame(out[keys])).to_numpy()
    return out.sort_values(["model", "depth"]).reset_index(drop=True)


def draw_profile(summary: pd.DataFrame, *, title: str) -> Figure:
    """Each quantity against depth, one line per model."""
    fig = Figure(figsize=(4 * 4, 7), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    for ax, (column, label) in zip(axes, QUANTITIES, strict=False):
        for model, part in summary.groupby("model"):
            ax.plot(part["depth"], part[column], marker="o", label=str(model))
            for _, r in part.iterrows():
                ax.annotate(str(r["layer"]), (r["depth"], r[column]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("ReLU layer (depth)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if column in ("region_radius",) and (summary[column] > 0).any():
            ax.set_yscale("symlog", linthresh=1e-3)
    axes[0].legend(fontsize=8)
    axes[-1].axis("off")
    fig.suptitle(title)
    return fig


def summarize(*, config: ProfileExperiment) -> dict[str, Any]:
    """``<name>-summary.parquet`` and its figure from the profile's table; kept when unchanged."""
    store, name = ExperimentStore.of(config), config.name
    title = (f"{name}: exact collision sets and polytopes at every ReLU layer "
             f"({config.targets} target(s) of label {config.target_label}, {config.n_vertices} vertices)")
    return write_summary(store, layer_summary(store.read_table()),
                         lambda frame: draw_profile(frame, title=title))
