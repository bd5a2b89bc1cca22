"""Does the paper's claim about saturating activations hold? The MNIST MLP trained with
each hidden activation, its collision polytopes compared at one hidden layer.

The paper's discussion says its observations "hold approximately for any activation
function that saturates, i.e. sigmoid, tanh or ELU, since in the saturating region, the
pre-activation can be changed substantially without significantly changing the
post-activation". This experiment measures it: the MLP of the MNIST experiment (same
widths, same training) with ReLU, tanh, sigmoid, ELU and GELU at its hidden layers, one
model per activation and training seed, the same targets for all (test images every model
classifies correctly), gradient polytopes at ``layer`` under each saturation tolerance
(ReLU, whose saturated units are exactly flat, once). The table holds one row per
(activation, seed, target, tolerance); ``summarize`` writes ``<name>-summary.parquet``
(per activation and tolerance: the draws' count, mean, standard deviation, extremes, 95%
t-interval, and the spread between seeds and between targets of the valid vertices, the
vertices' spread, the success rate and the feature errors of vertices and samples) and
``<name>-summary.png`` (each of those against the tolerance, one line per activation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from collide._io import file_digest
from collide.api import find_polytopes
from collide.config import GradientConfig, resolve_device
from collide.datasets.mnist import ensure_mnist, load_mnist, mnist_files
from collide.errors import ConfigError, DataError
from collide.experiments import mnist, spread
from collide.experiments.configs.activations import ActivationsExperiment, Draw, arch_of
from collide.experiments.configs.mnist import INPUT_SHAPE
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.models.zoo import build_model, checkpoint_source, load_checkpoint
from collide.polytope import dataset_avg_distance
from collide.results.records import RowRecord
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, write_summary
from collide.sites import function_of
from collide.solvers import solver_for
from collide.taps import check_units, preactivation, site_of

NAME = "activations"
Config = ActivationsExperiment

# The table columns summarised per (activation, tolerance), in the summary's and the
# figure's order: what the issue compares (valid vertices, spread, success, the samples'
# feature error) and the vertices' own feature error.
COLUMNS = ("valid_vertices", "vertex_avg_distance", "success_rate", "samples_max_feature_rel_error",
           "max_feature_rel_error")
# Files :func:`summarize` writes beyond the table and figure (engine.experiment_store).
OUTPUTS = SUMMARY_OUTPUTS


def layers(config: ActivationsExperiment) -> list[str]:
    """The layers every activation's MLP names alike (``layer`` takes one of them)."""
    return ["fc1", "fc2"]


def validate(*, config: ActivationsExperiment) -> None:
    """Fail before any work unless every activation's MLP has ``layer`` with at least
    ``n_vertices`` units that collide can address."""
    for activation in config.activations:
        check_units(build_model(arch_of(activation)), config.layer, INPUT_SHAPE, config.n_vertices)


def saturation_tol(draw: Draw, config: ActivationsExperiment) -> float:
    """The tolerance a draw is solved under: its own, or (a piecewise-linear activation,
    which ignores it) the gradient config's."""
    return config.gradient.saturation_tol if draw.saturation_tol is None else draw.saturation_tol


def gradient_config(draw: Draw, config: ActivationsExperiment) -> GradientConfig:
    """The gradient config a draw is solved with: ``gradient`` at the draw's tolerance
    (unchanged for a piecewise-linear activation, whose digest and rows stay ReLU's own)."""
    if draw.saturation_tol is None:
        return config.gradient
    return dataclasses.replace(config.gradient, saturation_tol=draw.saturation_tol)


def saturated_counts(model: torch.nn.Module, layer: str, images: torch.Tensor, *, tol: float) -> list[int]:
    """How many units of each image's feature at ``layer`` are saturated under ``tol``: the
    units a vertex may push (:meth:`collide.activations.Saturation.saturated`, the regimes
    the solvers and the validity check use; a piecewise-linear activation's flat pieces).

    Shapes:
        images: (B, *input)
    """
    site = site_of(model, layer, images[:1])
    sat = function_of(site).at(tol)
    with torch.no_grad():
        pre = preactivation(model, images, site).double()
    return [int(n) for n in sat.saturated(pre).sum(1).tolist()]


def pick_common_targets(checkpoints: dict[str, str], *, config: ActivationsExperiment) -> list[dict[str, int]]:
    """The first ``targets_per_label`` test images of each of ``labels`` that every model
    (``checkpoints``: by ``activation/seed``) classifies correctly, in label order. How
    many units each has saturated is not asked: a target is an image, not one chosen to
    suit an activation (:func:`saturation_counts` says where it can be solved).

    Raises:
        DataError: fewer such images of a label than ``targets_per_label``.
    """
    test = load_mnist(config.data_root, "test")
    models = [load_checkpoint(path)[0] for path in checkpoints.values()]
    found = spread.first_right_by_all(test.images, test.labels, models, wanted=config.labels,
                                      per_label=config.targets_per_label, who=f"{len(checkpoints)} models")
    return [{"target_index": h, "label": label} for label, hits in found.items() for h in hits]


# Test images whose saturated units are counted to say how typical the targets' counts are.
PREVALENCE_IMAGES = 1000


def saturation_counts(checkpoints: dict[str, str], targets: list[dict[str, int]], *,
                      config: ActivationsExperiment) -> dict[str, dict[str, Any]]:
    """Per ``activation/seed`` and tolerance (``"exact"`` for a piecewise-linear
    activation): each target's saturated units at ``layer`` (``targets``, in order) and
    their median over the first :data:`PREVALENCE_IMAGES` test images (``test_median``)."""
    test = load_mnist(config.data_root, "test")
    images = test.images[: PREVALENCE_IMAGES]
    chosen = test.images[[t["target_index"] for t in targets]]
    out: dict[str, dict[str, Any]] = {}
    for key, path in checkpoints.items():
        model = load_checkpoint(path)[0]
        activation = key.split("/")[0]
        out[key] = {}
        for tol in config.tolerances(activation):
            solved_at = saturation_tol(Draw(activation, 0, 0, tol), config)
            out[key][tol_key(tol)] = {
                "targets": saturated_counts(model, config.layer, chosen, tol=solved_at),
                "test_median": float(np.median(saturated_counts(model, config.layer, images, tol=solved_at))),
            }
    return out


def tol_key(tol: float | None) -> str:
    """A tolerance as a JSON key: ``exact`` for a piecewise-linear activation's flat pieces."""
    return "exact" if tol is None else repr(float(tol))


def planned(context: dict[str, Any], config: ActivationsExperiment) -> list[tuple[Draw, int]]:
    """Every draw with its target's saturated units; a draw is solved (has rows) when they
    are at least ``n_vertices``: each vertex pushes one, and a polytope of fewer vertices
    than the others' would not compare."""
    counts = context["saturated"]
    return [(d, counts[f"{d.activation}/{d.seed}"][tol_key(d.saturation_tol)]["targets"][d.target])
            for d in config.draws]


def prepare(*, config: ActivationsExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """MNIST on disk, one classifier per (activation, seed) (trained or reused), the common
    targets, and their saturated units under each model and tolerance."""
    ensure_mnist(config.data_root, allow_download=config.allow_download)
    keys = [(a, s) for a in config.activations for s in config.seeds]
    trained = {}
    for k, (activation, seed) in enumerate(keys):
        progress("checkpoints (activations x seeds)", k, len(keys))
        trained[f"{activation}/{seed}"] = mnist.train_model(config=config.model_config(activation, seed),
                                                            progress=progress)
    progress("checkpoints (activations x seeds)", len(keys), len(keys))
    files = mnist_files(config.data_root)
    if files is None:
        raise DataError(f"MNIST not found in {config.data_root}")
    checkpoints = {k: t["checkpoint"] for k, t in trained.items()}
    targets = pick_common_targets(checkpoints, config=config)
    test = load_mnist(config.data_root, "test")
    distance = dataset_avg_distance(test.images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    first = next(iter(trained.values()))
    return {
        "checkpoints": checkpoints,
        "sha256": {k: t["sha256"] for k, t in trained.items()},
        "test_accuracy": {k: t["test_accuracy"] for k, t in trained.items()},
        "reused": all(t["reused"] for t in trained.values()),
        "origins": {k: t["origin"] for k, t in trained.items()},
        "targets": targets, "saturated": saturation_counts(checkpoints, targets, config=config),
        "dataset_avg_distance": distance, "dataset": first["dataset"], "data_digest": first["data_digest"],
        "inputs": {"checkpoint_sha256": {k: t["sha256"] for k, t in trained.items()},
                   "data": file_digest([files["test_images"], files["test_labels"]]), "dataset": first["dataset"]},
    }


def plan(context: dict[str, Any], *, config: ActivationsExperiment) -> list[Job]:
    """One job per row: the solved draws (:func:`planned`) in the order of
    :attr:`ActivationsExperiment.draws`, each ``len(rows)`` consecutive rows."""
    jobs = []
    solved = [d for d, n in planned(context, config) if n >= config.n_vertices]
    for k, draw in enumerate(solved):
        for j, spec in enumerate(config.rows):
            row = k * len(config.rows) + j
            tol = "exact" if draw.saturation_tol is None else f"{draw.saturation_tol:g}"
            jobs.append(job(f"{draw.activation}-seed-{draw.seed}-target-{draw.target}-tol-{tol}-row-{row}", [row],
                            activation=draw.activation, seed=draw.seed, target=draw.target,
                            saturation_tol=draw.saturation_tol, example=context["targets"][draw.target],
                            init=spec.init))
    return jobs


def solve(job: Job, context: dict[str, Any], *, config: ActivationsExperiment,
          progress: Progress = no_progress) -> None:
    """The row's gradient polytope under its activation's and seed's checkpoint, at its tolerance."""
    spec = job.spec
    draw = Draw(spec["activation"], spec["seed"], spec["target"], spec["saturation_tol"])
    key = f"{draw.activation}/{draw.seed}"
    checkpoint = context["checkpoints"][key]
    model, meta = load_checkpoint(checkpoint)
    test = load_mnist(config.data_root, "test")
    example = spec["example"]
    if spec["init"] != "target":
        raise ConfigError(f"the activations experiment starts every polytope from its target, got init "
                          f"{spec['init']!r}")
    target = test.images[example["target_index"]]
    solver = solver_for("gradient", gradient_config(draw, config))
    [poly] = find_polytopes(model, config.layer, [target], n_vertices=config.n_vertices, method=solver,
                            device=resolve_device(config.device),
                            progress=lambda s, n, _d: progress("vertices (gradient)", s, n))
    tol = saturation_tol(draw, config)
    [n_saturated] = saturated_counts(model, config.layer, target[None], tol=tol)
    arch = arch_of(draw.activation)
    RowRecord.of(
        poly, config=config, row=job.rows[0], init="target", model=mnist.model_name(context, arch),
        model_source=checkpoint_source(checkpoint, meta["sha256"]), loss=solver.loss_name,
        dataset_avg_distance=context["dataset_avg_distance"],
        extra_attrs={
            "checkpoint": checkpoint, "checkpoint_sha256": meta["sha256"], "test_accuracy": meta["test_accuracy"],
            "arch": arch, "activation": draw.activation, "seed": draw.seed, "target_number": draw.target,
            "target_index": example["target_index"], "init_index": example["target_index"],
            # None: a piecewise-linear activation, saturated exactly on its flat pieces.
            "saturation_tol": draw.saturation_tol, "solved_saturation_tol": tol, "n_saturated": n_saturated,
            **mnist.data_attrs({**context, "origin": context["origins"][key]}), **solver.record,
        },
    ).write(config.results_root)


# --- the summary -------------------------------------------------------------------------

# The summary's columns (<name>-summary.parquet), in order.
SUMMARY_COLUMNS = ("activation", "saturation_tol", "column", "draws", "solved", "target_saturated_median",
                   "test_saturated_median", "n", "missing", "mean", "std", "min", "max", "ci95_low", "ci95_high",
                   "n_seeds", "between_seed_std", "n_targets", "between_target_std")


def draws(table: pd.DataFrame, attrs: list[dict[str, Any]]) -> pd.DataFrame:
    """The table with each row's ``activation``, ``saturation_tol`` (NaN: exact), ``seed``,
    ``target_index`` and ``n_saturated`` from its row group's attrs."""
    by_row = {int(a["row"]): a for a in attrs}
    rows = [by_row[int(r)] for r in table["row"]]
    tol = [math.nan if a["saturation_tol"] is None else float(a["saturation_tol"]) for a in rows]
    frame = table.assign(activation=[a["activation"] for a in rows], saturation_tol=tol,
                         seed=[int(a["seed"]) for a in rows], target_index=[int(a["target_index"]) for a in rows],
                         n_saturated=[int(a["n_saturated"]) for a in rows])
    for column in COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def all_draws(context: dict[str, Any], config: ActivationsExperiment) -> pd.DataFrame:
    """Every draw, solved or not: ``activation``, ``saturation_tol`` (NaN: exact), ``seed``,
    ``target``, ``n_saturated`` (the target's saturated units), ``test_median`` (the
    model's median over the first test images) and ``solved``."""
    counts = context["saturated"]
    return pd.DataFrame([
        {"activation": d.activation, "saturation_tol": math.nan if d.saturation_tol is None else d.saturation_tol,
         "seed": d.seed, "target": d.target, "n_saturated": n,
         "test_median": counts[f"{d.activation}/{d.seed}"][tol_key(d.saturation_tol)]["test_median"],
         "solved": n >= config.n_vertices}
        for d, n in planned(context, config)])


def activations_summary(frame: pd.DataFrame, every: pd.DataFrame) -> pd.DataFrame:
    """One row per (activation, tolerance, column) in draw order: how many draws there
    were and how many were solved (the target had ``n_vertices`` saturated units), the
    median saturated units of the targets and of the test images, and the solved rows'
    spread (:func:`collide.experiments.spread.describe`: over seeds and targets, NaN
    draws left out and counted); ``saturation_tol`` NaN for a piecewise-linear activation."""
    out = []
    for (activation, tol), group in every.groupby(["activation", "saturation_tol"], sort=False, dropna=False):
        same_tol = frame["saturation_tol"].isna() if math.isnan(tol) else frame["saturation_tol"] == tol
        rows = frame[(frame["activation"] == activation) & same_tol]
        head = {"activation": activation, "saturation_tol": float(tol), "draws": len(group),
                "solved": int(group["solved"].sum()), "target_saturated_median": float(group["n_saturated"].median()),
                "test_saturated_median": float(group["test_median"].median())}
        for column in COLUMNS:
            out.append({**head, "column": column, **spread.describe(rows, column)})
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def draw_summary(summary: pd.DataFrame, *, title: str) -> Figure:
    """One panel for the share of draws solved (targets with ``n_vertices`` saturated
    units), then one per column: each activation's mean over its solved draws against the
    tolerance (log scale), with the draws' min-max as a band; a piecewise-linear activation
    (no tolerance) as a dashed horizontal line across the panel."""
    panels = ("solved share", *COLUMNS)
    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    activations = list(dict.fromkeys(summary["activation"]))
    tols = sorted(t for t in summary["saturation_tol"].dropna().unique())
    share = summary[summary["column"] == COLUMNS[0]].assign(
        mean=lambda f: f["solved"] / f["draws"], min=lambda f: f["solved"] / f["draws"],
        max=lambda f: f["solved"] / f["draws"], column="solved share")
    summary = pd.concat([share, summary])
    for ax in axes[len(panels):]:
        ax.axis("off")
    for ax, column in zip(axes, panels, strict=False):
        part = summary[summary["column"] == column]
        for k, activation in enumerate(activations):
            rows = part[part["activation"] == activation].sort_values("saturation_tol")
            colour = f"C{k % 10}"
            exact = rows[rows["saturation_tol"].isna()]
            if not exact.empty and tols and np.isfinite(exact.iloc[0]["mean"]):
                r = exact.iloc[0]
                ax.axhline(r["mean"], color=colour, linestyle="--",
                           label=f"{activation} (piecewise linear: no tolerance)")
                ax.axhspan(r["min"], r["max"], color=colour, alpha=0.1)
            smooth = rows[rows["saturation_tol"].notna()]
            if not smooth.empty:
                ax.plot(smooth["saturation_tol"], smooth["mean"], "o-", color=colour, label=activation)
                ax.fill_between(smooth["saturation_tol"], smooth["min"], smooth["max"], color=colour, alpha=0.15)
        if tols:
            ax.set_xscale("log")
            ax.invert_xaxis()  # tightening to the right
        if column.endswith("rel_error"):
            ax.set_yscale("log")
        ax.set_xlabel("saturation_tol")
        ax.set_title(column, fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 8), fontsize=8)
    fig.suptitle(title + "\nline: mean over the solved draws (seeds x targets); band: min-max", fontsize=9)
    return fig


def summarize(*, config: ActivationsExperiment) -> dict[str, Any]:
    """``<name>-summary.parquet`` and ``<name>-summary.png`` from the table and the rows'
    attrs; each kept when unchanged."""
    store = ExperimentStore.of(config)
    table = store.read_table()
    frame = draws(table, [store.read_attrs(int(r)) for r in table["row"]])
    every = all_draws(prepare(config=config), config)  # every input reused: the draws without rows too
    title = (f"{config.name}: MNIST MLP with {', '.join(config.activations)} at {config.layer}; "
             f"{len(config.seeds)} training seeds x {config.n_targets} targets, {config.n_vertices} vertices")
    return write_summary(store, activations_summary(frame, every), lambda s: draw_summary(s, title=title))
