"""Baselines side by side: is the colliding polytope special, or is the net merely smooth?

For each MNIST target, one table row per way of making points near it, each a set of
points (:class:`collide.results.points.PointsRecord`) that the engine evaluates alike
(success rate: the share classified as the target's class; float64 feature errors at
the row's layer; distances to the target and init; spread):

0. ``gradient-hull``: uniform samples of the simplex of the gradient polytope's valid
   vertices (paper §2), claimed to collide to the solver's ``rel_tol``;
1. ``exact-region``: hit-and-run samples of the target's exact collision set
   (:func:`collide.api.collision_geometry`), claimed exact (to float32 storage);
2. ``random-ball``: the authors' control (§3.1), points at the polytope vertices'
   distances in random directions (:func:`collide.comparisons.baselines.random_ball`);
3. ``null-space``: Ozbulak et al.'s moves in null(W_P), clipped to the box, measured at
   ``layer`` (the first ReLU), and
4. the same points measured at ``deeper_layer``: whether deeper collisions follow;
5. ``inversion``: Mahendran and Vedaldi's code inversion from the other digit, one point.

The baselines make no claim. ``summarize`` draws ``<name>-baselines.png``: success rate
and feature error per method.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from collide.api import collision_geometry, find_polytope
from collide.comparisons.baselines import (
    first_relu_layer,
    invert,
    null_space_points,
    random_ball,
)
from collide.config import resolve_device
from collide.datasets.mnist import load_mnist
from collide.errors import ConfigError
from collide.experiments import mnist
from collide.experiments.configs.baselines import BaselinesExperiment
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.models.zoo import build_model, checkpoint_source, load_checkpoint
from collide.polytope import combine, sample_weights
from collide.results.figures import label_rates, save_figure
from collide.results.points import PointsRecord
from collide.results.store import ExperimentStore
from collide.results.summary import baseline_summary
from collide.taps import resolve_layer

NAME = "baselines"
# Exact collision-set samples claim a feature error of 0: the points rows' check allows
# collide.results.points.CLAIM_SLACK (1e-6) for their float32 storage.
EXACT_CLAIM = 0.0


Config = BaselinesExperiment
layers, prepare = mnist.layers, mnist.prepare


def validate(*, config: BaselinesExperiment) -> None:
    """Fail before any work unless ``layer`` is the first ReLU and ``deeper_layer`` a later one."""
    mnist.validate(config=config)
    model, example = build_model(config.train.arch), torch.zeros(*mnist.INPUT_SHAPE)
    first = first_relu_layer(model, example)
    layer = resolve_layer(model, config.layer, example.unsqueeze(0))
    if layer != first:
        raise ConfigError(f"the baselines experiment needs layer = the first ReLU ({first!r}) for its "
                          f"null-space rows, got {config.layer!r}")
    deeper = resolve_layer(model, config.deeper_layer, example.unsqueeze(0))
    if deeper == first:
        raise ConfigError(f"deeper_layer must come after {first!r}, got {config.deeper_layer!r}")


def plan(context: dict[str, Any], *, config: BaselinesExperiment) -> list[Job]:
    """One job per target: all its rows, which share the gradient polytope."""
    n = len(config.methods)
    return [job(f"target-{k}-baselines", list(range(k * n, (k + 1) * n)), target=t)
            for k, t in enumerate(context["targets"])]


def _vertex_distances(vertices: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    return (vertices.double() - target.double()).flatten(1).norm(dim=1).numpy()


def solve(job: Job, context: dict[str, Any], *, config: BaselinesExperiment,
          progress: Progress = no_progress) -> None:
    """Every row of one target: the gradient polytope first, then each baseline."""
    model, meta = load_checkpoint(context["checkpoint"])
    test = load_mnist(config.data_root, "test")
    spec = job.spec["target"]
    target, other = test.images[spec["target_index"]], test.images[spec["other_index"]]
    device = resolve_device(config.device)
    rows = dict(zip(config.methods, job.rows, strict=True))
    first = job.rows[0]  # each target's random draws are seeded apart
    base = {
        "experiment": config.name, "model": mnist.model_name(context, config.train.arch),
        "model_source": checkpoint_source(context["checkpoint"], meta["sha256"]), "config": config.to_dict(),
        "config_digest": config.digest(), "target": target.numpy(),
        "dataset_avg_distance": context["dataset_avg_distance"],
    }
    ids = {"target_index": spec["target_index"], "init_index": spec["target_index"]}

    def write(method: str, points: torch.Tensor, *, layer: str | None = None, init: str = "target",
              init_image: torch.Tensor | None = None, claim: float | None = None,
              sampler: dict[str, Any] | None = None, **columns: Any) -> None:
        PointsRecord(
            **base, row=rows[method], layer=layer or config.layer, init=init,
            method=method.removesuffix("-deeper"), claim_rel_error=claim,
            points=points.numpy().astype(np.float32),
            init_image=(target if init_image is None else init_image).numpy(), columns={**ids, **columns},
            sampler=sampler,
        ).write(config.results_root)

    distances = None
    if "gradient-hull" in rows:
        start = time.perf_counter()
        poly = find_polytope(model, config.layer, target, init=target, n_vertices=config.n_vertices,
                             method="gradient", device=device, config=config.gradient,
                             progress=lambda s, n, _d: progress("vertices (gradient)", s, n))
        good = poly.vertices[poly.valid]
        if len(good) == 0:
            raise RuntimeError(f"job {job.label}: no valid gradient vertex ({'; '.join(poly.reasons)}): "
                               "there is no polytope to compare the baselines with")
        distances = _vertex_distances(good, target)
        gen = torch.Generator().manual_seed(config.hull.seed + first)
        weights = sample_weights(config.hull.n, len(good), sampler=config.hull.sampler, generator=gen)
        write("gradient-hull", combine(weights, good), claim=poly.criterion.rel_tol,
              valid_vertices=len(good), vertex_distance_mean=float(distances.mean()),
              vertex_distance_max=float(distances.max()), seconds=time.perf_counter() - start)
    if "exact-region" in rows:
        geo = collision_geometry(model, config.layer, target, config=config.geometry)
        write("exact-region", geo.samples, claim=EXACT_CLAIM, sampler=geo.sampler, region_dim=geo.dim,
              region_radius=geo.radius,
              region_mean_width=float(geo.widths.mean()) if len(geo.widths) else 0.0,
              seconds=geo.seconds)
    if "random-ball" in rows:
        start = time.perf_counter()
        ball = random_ball(target, distances, n=config.ball.n, seed=config.ball.seed + first,  # type: ignore[arg-type]
                           lower=config.gradient.lower, upper=config.gradient.upper)
        write("random-ball", ball.points, vertex_distance_mean=float(distances.mean()),  # type: ignore[union-attr]
              reached_mean=float(ball.reached.mean()), short_share=float((ball.reached < ball.wanted).mean()),
              seconds=time.perf_counter() - start)
    wanted = [m for m in ("null-space", "null-space-deeper") if m in rows]
    if wanted:
        start = time.perf_counter()
        ns = null_space_points(model, config.layer, target, distances=distances,  # type: ignore[arg-type]
                               n=config.null_space.n, seed=config.null_space.seed + first,
                               lower=config.gradient.lower, upper=config.gradient.upper,
                               rank_rtol=config.null_space.rank_rtol)
        seconds = time.perf_counter() - start
        for method in wanted:  # the same points, measured where the construction moved them and deeper
            write(method, ns.points, layer=config.layer if method == "null-space" else config.deeper_layer,
                  vertex_distance_mean=float(distances.mean()),  # type: ignore[union-attr]
                  reached_mean=float(ns.reached.mean()), clipped_share=float(ns.clipped.mean()),
                  null_dim=ns.null_dim, rank_positive=ns.rank, moved_at=config.layer, seconds=seconds)
    if "inversion" in rows:
        inv = invert(model, config.layer, target, other, config=config.inversion, device=device)
        write("inversion", inv.point.unsqueeze(0), init="other", init_image=other,
              **{**ids, "init_index": spec["other_index"]}, init_rel_error=inv.init_rel_error,
              distance_to_init=inv.distance_to_init, steps=len(inv.history), final_loss=float(inv.history[-1]),
              seconds=inv.seconds)


FIGURE = "-baselines.png"
# Files :func:`summarize` writes beyond the table and figure, as suffixes of the name: a
# killed run's temporaries of them are found from here (engine.experiment_store).
OUTPUTS = (FIGURE,)


def draw_baselines(summary: pd.DataFrame, *, title: str = "") -> Figure:
    """Per method: success rate (top) and feature error (bottom, log: bar the largest,
    dot the mean). Drawn on its own Agg canvas; pyplot's state is not touched."""
    fig = Figure(figsize=(max(6.0, 1.2 * len(summary)), 6.0))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(summary))
    rates = summary["success_rate"].to_numpy(dtype=float)
    top.bar(x, rates, 0.6)
    label_rates(top, x, rates, summary["scored"].to_numpy(), summary["targets"].to_numpy())
    top.set_ylabel("success rate")
    top.set_ylim(0, 1.05)
    err = summary["max_feature_rel_error"].to_numpy(dtype=float)
    bottom.bar(x, np.maximum(err, 1e-12), 0.6, label="largest")
    bottom.plot(x, np.maximum(summary["mean_feature_rel_error"].to_numpy(dtype=float), 1e-12), "ko", label="mean")
    bottom.set_yscale("log")
    bottom.set_ylabel("feature error (relative)")
    bottom.set_xticks(x, [label.replace(" @ ", "\n@ ") for label in summary["label"]], fontsize=8)
    bottom.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def summarize(*, config: BaselinesExperiment) -> dict[str, Any]:
    """``<name>-baselines.png`` from the table: success rate and feature error per method."""
    store, name = ExperimentStore.of(config), config.name
    summary = baseline_summary(store.read_table())
    title = (f"{name}: {config.n_targets} target(s), polytope at {config.layer} ({config.n_vertices} vertices); "
             f"null space also measured at {config.deeper_layer}")
    path = save_figure(draw_baselines(summary, title=title), store.output(FIGURE))
    return {"baselines_figure": str(path), "baselines": summary.to_dict(orient="records")}
