"""Regularisers that shrink the polytopes (paper §5.2), measured.

The MLP is trained once per (seed, penalty) (:func:`collide.models.regularised.train_regularised`:
the cosine penalty between rows of the weights in front of the collision layer, plain
weight decay, or none); the same targets (the first test images every model classifies
correctly) get one exact row each under every model, with its collision set measured
(:func:`collide.api.collision_geometry`: dimension, inscribed radius, mean width).
``summarize`` sets each penalty's test accuracy against those sizes, with t-intervals
over seeds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from collide.api import collision_geometry, find_polytope
from collide.config import resolve_device
from collide.datasets.mnist import ensure_mnist, load_mnist
from collide.errors import DataError
from collide.experiments import mnist
from collide.experiments.configs.regularisers import Penalty, RegularisersExperiment
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.experiments.variants import variant_checkpoint
from collide.models.regularised import train_regularised
from collide.models.zoo import checkpoint_source, load_checkpoint
from collide.polytope import dataset_avg_distance
from collide.results.detection import t_interval
from collide.results.records import RowRecord, region_fields
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, write_summary
from collide.solvers import solver_for

NAME = "regularisers"
Config = RegularisersExperiment
OUTPUTS = SUMMARY_OUTPUTS
layers = mnist.layers

# The sizes summarised (table columns of an exact row), in the figure's order.
SIZES = (("region_dim", "dim C"), ("region_radius", "inscribed radius"), ("region_mean_width", "mean width"))
SUMMARY_COLUMNS = ("penalty", "kind", "strength", "seeds", "targets", "test_accuracy", "test_accuracy_low",
                   "test_accuracy_high", "cosine_penalty",
                   *(f"{c}{s}" for c, _ in SIZES for s in ("", "_low", "_high")))


def validate(*, config: RegularisersExperiment) -> None:
    mnist.validate(config=config)


def row_number(config: RegularisersExperiment, seed_position: int, penalty: int, target: int) -> int:
    return (seed_position * len(config.penalties) + penalty) * config.targets + target


def _variant(penalty: Penalty, module: str) -> dict[str, Any]:
    return {"penalty": penalty.kind, "strength": float(penalty.strength), "module": module}


def prepare(*, config: RegularisersExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """MNIST, one model per (seed, penalty) trained (or reused), the common targets."""
    ensure_mnist(config.data_root, allow_download=config.allow_download)
    test = load_mnist(config.data_root, "test")
    models: dict[str, dict[str, Any]] = {}
    right = torch.ones(len(test.labels), dtype=torch.bool)
    for seed in config.seeds:
        cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
        for j, p in enumerate(config.penalties):
            progress(f"train (seed {seed})", j, len(config.penalties))
            fit = partial(_fit, config=cfg, penalty=p, module=config.penalty_module)
            trained = variant_checkpoint(cfg, variant=_variant(p, config.penalty_module), fit=fit)
            model, meta = load_checkpoint(trained["checkpoint"])
            with torch.no_grad():
                right &= model(test.images).argmax(1) == test.labels
            models[f"{seed}/{j}"] = {**trained, "cosine_penalty": meta.get("cosine_penalty"), "label": p.label,
                                     "seed": seed}
        progress(f"train (seed {seed})", len(config.penalties), len(config.penalties))
    hits = torch.nonzero(right).flatten()[: config.targets]
    if len(hits) < config.targets:
        raise DataError(f"only {len(hits)} test images are classified correctly by every model, fewer than "
                        f"targets={config.targets}")
    first = next(iter(models.values()))
    distance = dataset_avg_distance(test.images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    return {"models": models, "targets": [int(h) for h in hits], "dataset_avg_distance": distance,
            # As a run prints them: by penalty and seed, not by the jobs' keys.
            "test_accuracy": {f"{m['label']} (seed {m['seed']})": m["test_accuracy"] for m in models.values()},
            "inputs": {"checkpoint_sha256": {k: m["sha256"] for k, m in models.items()},
                       "data": first["data_digest"]}}


def _fit(train_split: Any, test_split: Any, *, config: RegularisersExperiment, penalty: Penalty,
         module: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    return train_regularised(train_split, test_split, config=config.train, penalty=penalty.kind,
                             strength=penalty.strength, module=module, device=resolve_device(config.device))


def plan(context: dict[str, Any], *, config: RegularisersExperiment) -> list[Job]:
    """One job per (seed, penalty, target): an exact row."""
    return [job(f"seed-{seed}-{p.kind}-{p.strength:g}-target-{k}", [row_number(config, i, j, k)], seed=seed,
                penalty=j, target_index=t)
            for i, seed in enumerate(config.seeds) for j, p in enumerate(config.penalties)
            for k, t in enumerate(context["targets"])]


def model_name(arch: str, penalty: str) -> str:
    """``mnist-mlp-penalty-cosine-10``: trained here on a subset, with a penalty (or none),
    this is not the paper's MNIST model, and its rows are set beside none of its tables
    (:func:`collide.results.reference.reference_for` knows the paper's by name)."""
    return f"mnist-{arch}-penalty-{re.sub(r'[^A-Za-z0-9.]+', '-', penalty)}"


def solve(job: Job, context: dict[str, Any], *, config: RegularisersExperiment,
          progress: Progress = no_progress) -> None:
    spec = job.spec
    penalty = config.penalties[spec["penalty"]]
    trained = context["models"][f"{spec['seed']}/{spec['penalty']}"]
    model, meta = load_checkpoint(trained["checkpoint"])
    target = load_mnist(config.data_root, "test").images[spec["target_index"]]
    solver = solver_for("exact", config.exact)
    poly = find_polytope(model, config.layer, target, init=target, n_vertices=config.n_vertices, method=solver,
                         device=resolve_device(config.device),
                         progress=lambda s, n, _d: progress("vertices (exact)", s, n))
    attrs, arrays = region_fields(collision_geometry(model, config.layer, target, config=config.geometry))
    RowRecord.of(
        poly, config=config, row=job.rows[0], init="target", model=model_name(config.train.arch, penalty.label),
        model_source=checkpoint_source(trained["checkpoint"], meta["sha256"]), loss=solver.loss_name,
        dataset_avg_distance=context["dataset_avg_distance"],
        extra_attrs={"checkpoint": trained["checkpoint"], "checkpoint_sha256": meta["sha256"],
                     "test_accuracy": meta["test_accuracy"], "target_index": spec["target_index"],
                     "init_index": spec["target_index"], "seed": spec["seed"], "penalty": penalty.label,
                     "penalty_kind": penalty.kind, "penalty_strength": float(penalty.strength),
                     "cosine_penalty": meta.get("cosine_penalty"), **solver.record, **attrs},
        extra_arrays=arrays,
    ).write(config.results_root)


def draws(store: ExperimentStore) -> pd.DataFrame:
    """The table with each row's seed and penalty (from its attrs)."""
    table = store.read_table()
    attrs = {int(r): store.read_attrs(int(r)) for r in table["row"]}
    out = table.assign(**{k: [attrs[int(r)][k] for r in table["row"]]
                          for k in ("seed", "penalty", "penalty_kind", "penalty_strength", "cosine_penalty")})
    for column, _ in SIZES:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    out["region_dim"] = out["region_dim"].where(out["region_dim"] >= 0)
    return out


def penalty_summary(frame: pd.DataFrame, penalties: list[str]) -> pd.DataFrame:
    """One line per penalty (in ``penalties``' order): the test accuracy and each size,
    first averaged over the targets of each seed, then over seeds with a 95% t-interval."""
    lines = []
    for label in penalties:
        part = frame[frame["penalty"] == label]
        if part.empty:
            continue
        per_seed = part.groupby("seed").agg(
            test_accuracy=("test_accuracy", "mean"), cosine_penalty=("cosine_penalty", "mean"),
            **{c: (c, "mean") for c, _ in SIZES})
        line = {"penalty": label, "kind": part["penalty_kind"].iloc[0],
                "strength": float(part["penalty_strength"].iloc[0]), "seeds": len(per_seed),
                "targets": int(part.groupby("seed").size().iloc[0]),
                "cosine_penalty": float(per_seed["cosine_penalty"].mean())}
        for column in ("test_accuracy", *(c for c, _ in SIZES)):
            values = per_seed[column].to_numpy(float)
            low, high = t_interval(values, within=(0.0, 1.0 if column == "test_accuracy" else math.inf))
            line.update({column: float(np.nanmean(values)) if np.isfinite(values).any() else np.nan,
                         f"{column}_low": low, f"{column}_high": high})
        lines.append(line)
    return pd.DataFrame(lines, columns=list(SUMMARY_COLUMNS))


def draw_tradeoff(summary: pd.DataFrame, frame: pd.DataFrame, *, title: str) -> Figure:
    """One panel per size: test accuracy (x) against the size (y), one point per penalty
    (mean over seeds, 95% t-intervals as bars) and per (seed, penalty) (small dots)."""
    fig = Figure(figsize=(5 * len(SIZES), 4.2), layout="constrained")
    axes = fig.subplots(1, len(SIZES))
    for ax, (column, label) in zip(axes, SIZES, strict=True):
        for k, line in enumerate(summary.itertuples(index=False)):
            colour = f"C{k % 10}"
            dots = frame[frame["penalty"] == line.penalty].groupby("seed")[["test_accuracy", column]].mean()
            ax.scatter(dots["test_accuracy"], dots[column], s=10, color=colour, alpha=0.5)
            x, y = line.test_accuracy, getattr(line, column)
            xerr = [[x - line.test_accuracy_low], [line.test_accuracy_high - x]] if np.isfinite(
                line.test_accuracy_low) else None
            low, high = getattr(line, f"{column}_low"), getattr(line, f"{column}_high")
            yerr = [[y - low], [high - y]] if np.isfinite(low) else None
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=colour, capsize=3, label=line.penalty)
        ax.set_xlabel("test accuracy")
        ax.set_ylabel(label)
        ax.set_title(f"{label} against test accuracy", fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def summarize(*, config: RegularisersExperiment) -> dict[str, Any]:
    """``<name>-summary.parquet`` (one line per penalty) and the trade-off figure."""
    store = ExperimentStore.of(config)
    frame = draws(store)
    summary = penalty_summary(frame, [p.label for p in config.penalties])
    title = (f"{config.name}: the MLP trained with each penalty ({len(config.seeds)} seeds), collision sets of "
             f"{config.targets} targets at {config.layer}; cosine penalty on the rows of {config.penalty_module}")
    return write_summary(store, summary, lambda s: draw_tradeoff(s, frame, title=title))
