"""Collisions across models: sets that collide in two networks at once, and transfer.

For each target and each partner model B (another architecture, or the same one
trained from another seed) beside the experiment's model A:

0. ``joint-region`` under A and 1. under B: the inputs whose features equal the
   target's in *both* models (A at ``layer``, B at ``partner_layer``: both models'
   rows stacked, :func:`collide.api.collision_geometry` with ``also``), their
   dimension, inscribed radius and mean width as columns, their hit-and-run samples
   as the points, claimed exact in each model;
2. ``exact-region`` of A under B: samples of A's own exact collision set, classified
   and measured by B: does a collision built for one network transfer to another?
3. ``gradient-hull`` of A under B: the same for the paper's gradient polytope of A.

Why collision-based poisons transfer is an open question in the poisoning literature;
rows 2 and 3 measure how often they do, rows 0 and 1 whether a set that collides in
both exists at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from collide.api import collision_geometry, find_polytope
from collide.config import resolve_device
from collide.datasets.mnist import load_mnist
from collide.experiments import mnist
from collide.experiments.configs.transfer import ROWS, TransferExperiment, parse_partner
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.models.zoo import build_model, checkpoint_source, load_checkpoint
from collide.polytope import combine, sample_weights
from collide.results.figures import label_rates
from collide.results.points import PointsRecord
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, write_summary
from collide.taps import check_units

# Files :func:`summarize` writes beyond the table and figure, as suffixes of the name
# (engine.experiment_store).
OUTPUTS = SUMMARY_OUTPUTS

NAME = "transfer"


Config = TransferExperiment
layers = mnist.layers


def validate(*, config: TransferExperiment) -> None:
    check_units(build_model(config.train.arch), config.layer, mnist.INPUT_SHAPE, config.n_vertices)
    for spec in config.partners:
        check_units(build_model(parse_partner(spec)[0]), config.partner_layer, mnist.INPUT_SHAPE, 1)


def prepare(*, config: TransferExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """Model A's context (data, checkpoint, targets) and every partner trained or reused."""
    context = mnist.prepare(config=config, progress=progress)
    partners = {spec: mnist.train_model(config=config.partner_config(spec), progress=progress)
                for spec in config.partners}
    return {**context, "partners": {s: p["checkpoint"] for s, p in partners.items()},
            "inputs": {**context["inputs"], "partners": {s: p["sha256"] for s, p in partners.items()}}}


def plan(context: dict[str, Any], *, config: TransferExperiment) -> list[Job]:
    """One job per (target, partner): its four rows share A's polytope and set."""
    n, jobs = len(ROWS), []
    for k, example in enumerate(context["targets"]):
        for p, spec in enumerate(config.partners):
            first = (k * len(config.partners) + p) * n
            jobs.append(job(f"target-{k}-{spec.replace(':', '-seed-')}", range(first, first + n),
                            example=example, partner=spec))
    return jobs


def solve(job: Job, context: dict[str, Any], *, config: TransferExperiment,
          progress: Progress = no_progress) -> None:
    model_a, meta_a = load_checkpoint(context["checkpoint"])
    spec = job.spec
    checkpoint_b = context["partners"][spec["partner"]]
    model_b, meta_b = load_checkpoint(checkpoint_b)
    target = load_mnist(config.data_root, "test").images[spec["example"]["target_index"]]
    first = job.rows[0]
    arch_b, seed_b = parse_partner(spec["partner"])
    source_a = checkpoint_source(context["checkpoint"], meta_a["sha256"])
    source_b = checkpoint_source(checkpoint_b, meta_b["sha256"])
    sources = {"A": (mnist.model_name(context, config.train.arch), source_a, config.layer),
               "B": (f"{mnist.model_name(context, arch_b)}-seed-{seed_b}", source_b, config.partner_layer)}
    common = {"target_index": spec["example"]["target_index"], "partner": spec["partner"],
              "model_a": sources["A"][0], "layer_a": config.layer, "model_b": sources["B"][0],
              "layer_b": config.partner_layer}

    def write(offset: int, under: str, method: str, points: torch.Tensor, claim: float | None,
              sampler: dict[str, Any] | None = None, **columns: Any) -> None:
        model, source, layer = sources[under]
        PointsRecord(
            experiment=config.name, row=first + offset, model=model, model_source=source, layer=layer,
            method=method, init="target", claim_rel_error=claim, config=config.to_dict(),
            config_digest=config.digest(), points=points.numpy().astype(np.float32), target=target.numpy(),
            init_image=target.numpy(), dataset_avg_distance=context["dataset_avg_distance"],
            columns={**common, "evaluated_under": under, **columns}, sampler=sampler,
        ).write(config.results_root)

    progress("joint set", 0, 3)
    joint = collision_geometry(model_a, config.layer, target, config=config.geometry,
                               also=[(model_b, config.partner_layer)])
    progress("joint set", 1, 3)
    own = collision_geometry(model_a, config.layer, target, config=config.geometry)
    progress("joint set", 2, 3)
    poly = find_polytope(model_a, config.layer, target, init=target, n_vertices=config.n_vertices,
                         method="gradient", device=resolve_device(config.device), config=config.gradient)
    progress("joint set", 3, 3)
    sets = {"joint_dim": joint.dim, "joint_dim_method": joint.dim_method, "joint_radius": joint.radius,
            "joint_mean_width": float(joint.widths.mean()) if len(joint.widths) else 0.0,
            "joint_free_dim": joint.free_dim, "a_dim": own.dim, "a_radius": own.radius,
            "a_mean_width": float(own.widths.mean()) if len(own.widths) else 0.0,
            "joint_rhat": joint.sampler["rhat"], "seconds": joint.seconds}
    write(0, "A", "joint-region", joint.samples, 0.0, joint.sampler, **sets)
    write(1, "B", "joint-region", joint.samples, 0.0, joint.sampler, **sets)
    write(2, "B", "exact-region", own.samples, None, own.sampler, a_dim=own.dim, a_radius=own.radius,
          seconds=own.seconds)
    good = poly.vertices[poly.valid]
    if len(good) == 0:
        raise RuntimeError(f"job {job.label}: no valid gradient vertex of model A, nothing to transfer "
                           f"({'; '.join(r for r in poly.reasons if r)}): raise gradient.max_steps")
    gen = torch.Generator().manual_seed(config.sample.seed + first)
    weights = sample_weights(config.sample.n_samples, len(good), sampler=config.sample.sampler, generator=gen)
    write(3, "B", "gradient-hull", combine(weights, good), None, valid_vertices=len(good),
          vertex_avg_distance_a=float(torch.pdist(good.flatten(1).double()).mean()) if len(good) > 1 else 0.0)


def partner_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (partner, row kind) over the targets: success rate (the transfer rate
    for rows under B) over the ``scored`` targets that have one (a set whose chains did not
    mix has none), the largest feature error, and the joint set's size."""
    frame = table.assign(kind=table["method"] + "@" + table["evaluated_under"])
    return frame.groupby(["partner", "kind"], sort=False).agg(
        targets=("row", "size"), scored=("success_rate", "count"), success_rate=("success_rate", "mean"),
        max_feature_rel_error=("max_feature_rel_error", "max"), joint_dim=("joint_dim", "mean"),
        joint_radius=("joint_radius", "mean"), joint_mean_width=("joint_mean_width", "mean"),
        a_dim=("a_dim", "mean"), mean_distance_to_target=("mean_distance_to_target", "mean"),
    ).reset_index()


def draw_transfer(summary: pd.DataFrame, *, title: str) -> Figure:
    """Success rate per row kind, one group of bars per partner; the joint set's
    dimension in the group's label."""
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    kinds = list(dict.fromkeys(summary["kind"]))
    partners = list(dict.fromkeys(summary["partner"]))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        part = summary[summary["kind"] == kind].set_index("partner").reindex(partners)
        x, rates = np.arange(len(partners)) + i * width, part["success_rate"].to_numpy(dtype=float)
        ax.bar(x, rates, width, label=kind)
        label_rates(ax, x, rates, part["scored"].fillna(0).to_numpy(), part["targets"].fillna(0).to_numpy())
    dims = summary.groupby("partner", sort=False)["joint_dim"].mean().reindex(partners)
    ax.set_xticks(np.arange(len(partners)) + 0.4 - width / 2,
                  [f"A with {p}\n(joint set: dim {d:.0f})" for p, d in dims.items()])
    ax.set_ylabel("success rate (share classified as the target's class)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def summarize(*, config: TransferExperiment) -> dict[str, Any]:
    """``<name>-summary.parquet`` and its figure from the table; kept when unchanged."""
    store, name = ExperimentStore.of(config), config.name
    title = (f"{name}: model A = {config.train.arch} at {config.layer}, partners at {config.partner_layer}, "
             f"{config.n_targets} target(s)")
    return write_summary(store, partner_summary(store.read_table()),
                         lambda frame: draw_transfer(frame, title=title))
