"""How far one draw is from another: Table 2 and the collision set's sizes over training
seeds and targets.

One checkpoint and one target are one draw. This experiment trains the MNIST model once
per seed in ``seeds`` (the MNIST experiment's ``train`` with its ``seed`` replaced; each
checkpoint trained or reused like :func:`collide.experiments.mnist.train_model`'s), picks
targets that *every* one of those models classifies correctly (the first
``targets_per_label`` test images of each of ``labels``), and solves the same rows for
every (seed, target): by default a gradient polytope from the target and from another
digit, and an exact polytope from the target with its collision set measured
(:func:`collide.api.collision_geometry`); and, at the gradient polytope's vertex
distances, the random-ball and null-space baselines, whose success rates moved with the
checkpoint. Seeds and targets are crossed, so the spread
across seeds (same targets, other checkpoints) and across targets (same checkpoints,
other images) are measured separately.

``summarize`` writes ``<name>-summary.parquet`` (one row per method, init and column: the
draws' count, mean, standard deviation, extremes, a 95% t-interval of the mean, and the
between-seed and between-target standard deviations), ``<name>-paper.parquet`` (each
Table 2 value of the paper against our range) and ``<name>-summary.png``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from collide._io import file_digest
from collide.api import collision_geometry, find_polytopes
from collide.comparisons.baselines import null_space_points, random_ball
from collide.config import RowSpec, resolve_device
from collide.datasets.mnist import ensure_mnist, load_mnist, mnist_files
from collide.errors import ConfigError, DataError
from collide.experiments import mnist
from collide.experiments.configs.spread import SpreadExperiment
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.models.zoo import checkpoint_source, load_checkpoint
from collide.polytope import dataset_avg_distance
from collide.results.detection import t_interval
from collide.results.points import PointsRecord
from collide.results.records import RowRecord, region_fields
from collide.results.reference import REFERENCE_COLUMNS, reference_for
from collide.results.store import ExperimentStore
from collide.results.summary import SUMMARY_OUTPUTS, summary_table, write_summary, write_summary_table
from collide.solvers import solver_for

NAME = "spread"
# Methods whose rows the paper's Table 2 describes: polytopes, not the baselines' points.
POLYTOPE_METHODS = ("gradient", "exact", "paper")

# The table columns summarised, in the summary's and the figure's order: Table 2's, the
# vertices' check, and (exact rows only) the collision set's sizes.
COLUMNS = (
    "success_rate", "target_top_prob", "samples_top_prob", "dataset_avg_distance", "vertex_avg_distance",
    "max_feature_rel_error", "valid_vertices", "region_dim", "region_radius", "region_mean_width", "n_positive",
)
# Columns where a negative value means "not recorded" (the gradient solver leaves n_positive at -1).
NOT_RECORDED_BELOW_ZERO = ("n_positive", "region_dim")
CONFIDENCE = 0.95
# Columns that are shares or probabilities, in [0, 1]; every other column summarised is a
# count or a size, at least 0. A mean's interval is cut to them.
IN_UNIT_INTERVAL = ("success_rate", "target_top_prob", "samples_top_prob")
# Columns every draw shares by construction: the dataset distance is one estimate (from
# sample.n_dataset_pairs random test pairs), whatever the seed or target.
SHARED_BY_EVERY_DRAW = ("dataset_avg_distance",)


# Files :func:`summarize` writes beyond the table and figure, as suffixes of the name
# (engine.experiment_store).
OUTPUTS = (*SUMMARY_OUTPUTS, summary_table("paper"))

# The paper comparison's columns (<name>-paper.parquet), in order.
COMPARISON_COLUMNS = ("method", "init", "paper_row", "setting", "column", "paper", "paper_low", "paper_high", "n",
                      "mean", "std", "min", "max", "ci95_low", "ci95_high", "in_range", "in_ci95", "verdict")
# Half a unit of the last digit Table 2 prints: "100%", "1.0", "10.21", "1.33".
PRINTED_HALF_UNIT = {"success_rate": 0.005, "target_top_prob": 0.05, "samples_top_prob": 0.05,
                     "dataset_avg_distance": 0.005, "vertex_avg_distance": 0.005}


Config = SpreadExperiment
layers = mnist.layers


def validate(*, config: SpreadExperiment) -> None:
    mnist.validate(config=config)
    if any(r.method == "paper" for r in config.rows):
        raise ConfigError("the spread has no paper rows: the paper scheme's learning rate is tuned per model, "
                          "and a tuned rate per seed is not one method")


def row_number(config: SpreadExperiment, seed_position: int, target: int, spec: int) -> int:
    """The row of seed ``seeds[seed_position]``, target ``target`` and row spec ``spec``
    (``len(rows) + b`` for the ``b``-th of ``baselines``)."""
    return (seed_position * config.n_targets + target) * config.rows_per_draw + spec


def first_right_by_all(images: torch.Tensor, labels: torch.Tensor, models: Sequence[torch.nn.Module], *,
                       wanted: Sequence[int], per_label: int, who: str) -> dict[int, list[int]]:
    """The first ``per_label`` images of each label of ``wanted`` that every model of
    ``models`` (``who`` in a refusal) classifies correctly, by label.

    Raises:
        DataError: fewer such images of a label than ``per_label``.
    """
    right = torch.ones(len(labels), dtype=torch.bool)
    with torch.no_grad():
        for model in models:
            right &= model(images).argmax(1) == labels
    found = {}
    for label in wanted:
        hits = torch.nonzero(right & (labels == label)).flatten()[:per_label]
        if len(hits) < per_label:
            raise DataError(f"only {len(hits)} test images of label {label} are classified correctly by all "
                            f"{who}, fewer than targets_per_label={per_label}")
        found[label] = [int(h) for h in hits]
    return found


def pick_common_targets(checkpoints: list[str], *, config: SpreadExperiment) -> list[dict[str, int]]:
    """The first ``targets_per_label`` test images of each of ``labels`` that every
    checkpoint classifies correctly, each with its ``other`` init (the first test image of
    another label), in label order. Refused when one has fewer than ``n_vertices``
    non-positive units at ``layer`` under one of the models."""
    test = load_mnist(config.data_root, "test")
    models = [load_checkpoint(c)[0] for c in checkpoints]
    found = first_right_by_all(test.images, test.labels, models, wanted=config.labels,
                               per_label=config.targets_per_label, who=f"{len(models)} seeds' models")
    targets = []
    for label, hits in found.items():
        other = int(torch.nonzero(test.labels != label).flatten()[0])
        targets += [{"target_index": h, "other_index": other, "label": label} for h in hits]
    for seed, model in zip(config.seeds, models, strict=True):
        mnist.check_targets(model, test.images, targets, layer=config.layer, n_vertices=config.n_vertices,
                            model_name=f"of seed {seed}")
    return targets


def prepare(*, config: SpreadExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """MNIST on disk, one classifier per seed (trained or reused), the common targets."""
    ensure_mnist(config.data_root, allow_download=config.allow_download)
    trained = {}
    for k, seed in enumerate(config.seeds):
        progress("checkpoints (seeds)", k, len(config.seeds))
        trained[seed] = mnist.train_model(config=config.seed_config(seed), progress=progress)
    progress("checkpoints (seeds)", len(config.seeds), len(config.seeds))
    files = mnist_files(config.data_root)
    if files is None:
        raise DataError(f"MNIST not found in {config.data_root}")
    targets = pick_common_targets([trained[s]["checkpoint"] for s in config.seeds], config=config)
    distance = dataset_avg_distance(load_mnist(config.data_root, "test").images,
                                    n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    return {
        "checkpoints": {str(s): t["checkpoint"] for s, t in trained.items()},
        "sha256": {str(s): t["sha256"] for s, t in trained.items()},
        "test_accuracy": {f"seed-{s}": t["test_accuracy"] for s, t in trained.items()},
        "reused": all(t["reused"] for t in trained.values()),
        "targets": targets, "dataset_avg_distance": distance,
        # The data's label and digest: the same for every seed (one data root).
        "dataset": trained[config.seeds[0]]["dataset"], "data_digest": trained[config.seeds[0]]["data_digest"],
        "origins": {str(s): t["origin"] for s, t in trained.items()},
        "inputs": {"checkpoint_sha256": {str(s): t["sha256"] for s, t in trained.items()},
                   "data": file_digest([files["test_images"], files["test_labels"]]),
                   "dataset": trained[config.seeds[0]]["dataset"]},
    }


def plan(context: dict[str, Any], *, config: SpreadExperiment) -> list[Job]:
    """One job per (seed, target, row spec); the baselines' rows join the job of the
    gradient polytope from the target, whose vertex distances they take."""
    jobs = []
    for i, seed in enumerate(config.seeds):
        for k, example in enumerate(context["targets"]):
            for j, spec in enumerate(config.rows):
                rows = [row_number(config, i, k, j)]
                if spec == RowSpec("gradient", "target"):
                    rows += [row_number(config, i, k, len(config.rows) + b) for b in range(len(config.baselines))]
                jobs.append(job(f"seed-{seed}-target-{k}-row-{rows[0]}-{spec.method}-{spec.init}", rows,
                                seed=seed, target=k, example=example, method=spec.method, init=spec.init,
                                baselines=list(config.baselines) if len(rows) > 1 else []))
    return jobs


def solve(job: Job, context: dict[str, Any], *, config: SpreadExperiment,
          progress: Progress = no_progress) -> None:
    """The MNIST experiment's row, under the job's seed's checkpoint."""
    spec = job.spec
    seed, example, method, init = spec["seed"], spec["example"], spec["method"], spec["init"]
    checkpoint = context["checkpoints"][str(seed)]
    model, meta = load_checkpoint(checkpoint)
    test = load_mnist(config.data_root, "test")
    init_index = example["target_index"] if init == "target" else example["other_index"]
    solver = solver_for(method, getattr(config, method))
    [poly] = find_polytopes(
        model, config.layer, [test.images[example["target_index"]]], inits=[test.images[init_index]],
        n_vertices=config.n_vertices, method=solver, device=resolve_device(config.device),
        progress=lambda s, n, _d: progress(f"vertices ({method})", s, n),
    )
    attrs, arrays = region_fields(collision_geometry(
        model, config.layer, poly.target, config=config.geometry)) if method == "exact" else ({}, {})
    row, *baseline_rows = job.rows
    draw = {"seed": seed, "target_number": spec["target"], "target_index": example["target_index"],
            "checkpoint_sha256": meta["sha256"], "test_accuracy": meta["test_accuracy"],
            **mnist.data_attrs({**context, "origin": context["origins"][str(seed)]})}
    RowRecord.of(
        poly, config=config, row=row, init=init, model=mnist.model_name(context, config.train.arch),
        model_source=checkpoint_source(checkpoint, meta["sha256"]),
        loss=solver.loss_name,
        dataset_avg_distance=context["dataset_avg_distance"],
        extra_attrs={"checkpoint": checkpoint, **draw, "init_index": init_index, **attrs},
        extra_arrays=arrays,
    ).write(config.results_root)
    if baseline_rows:
        _write_baselines(model, poly, dict(zip(spec["baselines"], baseline_rows, strict=True)), draw,
                         model_name=mnist.model_name(context, config.train.arch),
                         model_source=checkpoint_source(checkpoint, meta["sha256"]),
                         dataset_distance=context["dataset_avg_distance"], config=config)


def _write_baselines(model: torch.nn.Module, poly: Any, rows: dict[str, int], draw: dict[str, Any], *,
                     model_name: str, model_source: dict[str, Any], dataset_distance: float,
                     config: SpreadExperiment) -> None:
    """The baselines' points rows of one draw, at the distances of ``poly``'s valid vertices
    from the target (what :mod:`collide.experiments.baselines` does for one checkpoint)."""
    good = poly.vertices[poly.valid]
    if len(good) == 0:
        raise RuntimeError(f"seed {draw['seed']}, target {draw['target_index']}: no valid gradient vertex "
                           f"({'; '.join(r for r in poly.reasons if r)}): no distances for the baselines")
    distances = (good.double() - poly.target.double()).flatten(1).norm(dim=1).numpy()
    for method, row in rows.items():
        if method == "random-ball":
            points = random_ball(poly.target, distances, n=config.ball.n, seed=config.ball.seed + row,
                                 lower=config.gradient.lower, upper=config.gradient.upper)
        else:
            points = null_space_points(model, config.layer, poly.target, distances=distances, n=config.null_space.n,
                                       seed=config.null_space.seed + row, lower=config.gradient.lower,
                                       upper=config.gradient.upper, rank_rtol=config.null_space.rank_rtol)
        PointsRecord(
            experiment=config.name, row=row, model=model_name, model_source=model_source, layer=config.layer,
            method=method, init="target", claim_rel_error=None, config=config.to_dict(),
            config_digest=config.digest(), points=points.points.numpy().astype(np.float32),
            target=poly.target.numpy(), init_image=poly.target.numpy(), dataset_avg_distance=dataset_distance,
            columns={**draw, "init_index": draw["target_index"], "vertex_distance_mean": float(distances.mean()),
                     "reached_mean": float(points.reached.mean()), "clipped_share": float(points.clipped.mean())},
        ).write(config.results_root)


# --- the summary -------------------------------------------------------------------------


def draws(table: pd.DataFrame, attrs: list[dict[str, Any]]) -> pd.DataFrame:
    """The table with each row's ``seed`` (from its row group's attrs), one draw per row;
    a negative ``n_positive`` or ``region_dim`` (not recorded) as NaN."""
    by_row = {int(a["row"]): {**a.get("columns", {}), **a} for a in attrs}  # a points row keeps them in columns
    frame = table.assign(seed=[int(by_row[int(r)]["seed"]) for r in table["row"]],
                         target_index=[int(by_row[int(r)]["target_index"]) for r in table["row"]])
    for column in COLUMNS:
        if column not in frame:
            frame[column] = np.nan
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
        if column in NOT_RECORDED_BELOW_ZERO:
            frame[column] = frame[column].where(frame[column] >= 0)
    return frame


def _std(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) >= 2 else math.nan


def describe(frame: pd.DataFrame, column: str) -> dict[str, Any]:
    """One column's spread over the draws of ``frame`` (NaN draws left out and counted)."""
    values = frame[column].dropna().to_numpy(dtype=float)
    low, high = t_interval(values, CONFIDENCE, within=(0.0, 1.0 if column in IN_UNIT_INTERVAL else math.inf))
    per_seed = frame.groupby("seed")[column].mean().dropna()  # each seed's mean over its targets
    per_target = frame.groupby("target_index")[column].mean().dropna()  # each target's mean over seeds
    return {
        "n": len(values), "missing": int(frame[column].isna().sum()),
        "mean": float(values.mean()) if len(values) else math.nan,
        "std": float(values.std(ddof=1)) if len(values) >= 2 else math.nan,
        "min": float(values.min()) if len(values) else math.nan,
        "max": float(values.max()) if len(values) else math.nan,
        "ci95_low": low, "ci95_high": high,
        "n_seeds": len(per_seed), "between_seed_std": _std(per_seed),
        "n_targets": len(per_target), "between_target_std": _std(per_target),
    }


def spread_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, init, column) with at least one draw, in row and column order.

    Columns: ``method``, ``init``, ``column``; ``n`` (draws with a value), ``missing``
    (draws without: a success rate of a polytope with fewer than two valid vertices, a
    region column of a gradient row is not a draw at all and is left out); ``mean``,
    ``std`` (sample standard deviation, ddof 1), ``min``, ``max``; ``ci95_low`` and
    ``ci95_high``: the 95% t-interval of the mean, treating the draws as independent (they
    are not quite: seeds and targets are crossed, so a target that is easy under every
    seed narrows it); ``n_seeds`` and ``between_seed_std``: the standard deviation across
    seeds of each seed's mean over the targets; ``n_targets`` and ``between_target_std``:
    across targets of each target's mean over the seeds.
    """
    out = []
    for (method, init), group in frame.groupby(["method", "init"], sort=False):
        for column in COLUMNS:
            if group[column].notna().any():
                out.append({"method": method, "init": init, "column": column, **describe(group, column)})
    return pd.DataFrame(out)


def paper_comparison(frame: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Each Table 2 value the paper prints against our range, per (method, init) whose
    rows the paper has a row for (:func:`collide.results.reference.reference_for`: the
    MNIST MLP at its first layer, on data labelled MNIST; other data get no rows).

    ``paper_low``/``paper_high`` is the printed value's rounding interval (half a unit of
    its last digit); our range is the draws' ``min``-``max``, beside the 95% t-interval of
    our mean. ``in_range``: the two intervals overlap, i.e. some draw of ours could have
    printed the paper's number; ``in_ci95``: the paper's value is also a plausible mean.
    """
    out = []
    for (method, init), group in frame.groupby(["method", "init"], sort=False):
        # The group's draws span its targets' labels: the paper's row is the one any 7 of them has.
        found = (reference_for(r) for r in group.to_dict("records")) if method in POLYTOPE_METHODS else iter(())
        reference = next((r for r in found if r is not None), None)
        if reference is None:
            continue
        ours = summary[(summary["method"] == method) & (summary["init"] == init)].set_index("column")
        for column in REFERENCE_COLUMNS:
            paper = reference.values()[column]
            if paper is None or column not in ours.index:
                continue
            s = ours.loc[column]
            half = PRINTED_HALF_UNIT.get(column, 0.0)
            low, high = paper - half, paper + half
            in_range = bool(s["min"] <= high and low <= s["max"])
            in_ci = bool(s["ci95_low"] <= high and low <= s["ci95_high"])
            out.append({
                "method": method, "init": init, "paper_row": reference.name, "setting": reference.setting,
                "column": column, "paper": paper, "paper_low": low, "paper_high": high,
                "n": int(s["n"]), "mean": s["mean"], "std": s["std"], "min": s["min"], "max": s["max"],
                "ci95_low": s["ci95_low"], "ci95_high": s["ci95_high"], "in_range": in_range, "in_ci95": in_ci,
                "verdict": verdict(column, paper, s, in_range=in_range, in_ci=in_ci),
            })
    return pd.DataFrame(out, columns=list(COMPARISON_COLUMNS))


def verdict(column: str, paper: float, ours: pd.Series, *, in_range: bool, in_ci: bool) -> str:
    """``paper 1.33 against our range 0.9-1.2 (mean ..., 95% CI ..., n=20): OUTSIDE our range``."""
    if in_range:
        where = "inside our range, a plausible mean" if in_ci else "inside our range, not our typical value"
    else:  # a mean's interval from few draws can be wider than the draws themselves
        where = "OUTSIDE our range, though inside the 95% CI of our mean: too few draws to tell" if in_ci \
            else "OUTSIDE our range"
    if column in SHARED_BY_EVERY_DRAW:
        where += "; one estimate shared by every draw: seeds and targets do not move it, so this range is not its error"
    return (f"{column}: paper {paper:.4g} against our range {ours['min']:.4g} to {ours['max']:.4g} "
            f"(mean {ours['mean']:.4g}, 95% CI {ours['ci95_low']:.4g} to {ours['ci95_high']:.4g}, "
            f"n={int(ours['n'])}): {where}")


def draw_spread(frame: pd.DataFrame, summary: pd.DataFrame, comparison: pd.DataFrame, *, title: str) -> Figure:
    """One panel per column: every draw (colour: seed), our mean with its 95% t-interval
    (black) and the paper's value (red star) per (method, init)."""
    columns = [c for c in COLUMNS if c in set(summary["column"])]
    ncols = 4
    nrows = max(1, math.ceil(len(columns) / ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    groups = list(dict.fromkeys(zip(frame["method"], frame["init"], strict=True)))
    seeds = sorted(frame["seed"].unique())
    colours = {s: f"C{k % 10}" for k, s in enumerate(seeds)}
    rng = np.random.default_rng(0)  # jitter only
    for ax, column in zip(axes, columns, strict=False):
        ticks = []
        for x, (method, init) in enumerate(groups):
            part = frame[(frame["method"] == method) & (frame["init"] == init)]
            s = summary[(summary["method"] == method) & (summary["init"] == init) & (summary["column"] == column)]
            ticks.append(f"{method}\n{init}")
            if s.empty:
                continue
            for seed, per in part.groupby("seed"):
                values = per[column].dropna().to_numpy(dtype=float)
                ax.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, s=12, alpha=0.7,
                           color=colours[seed], label=f"seed {seed}" if x == 0 else None)
            r = s.iloc[0]
            if np.isfinite(r["ci95_low"]):
                ax.errorbar(x + 0.3, r["mean"], yerr=[[r["mean"] - r["ci95_low"]], [r["ci95_high"] - r["mean"]]],
                            fmt="ko", capsize=3, markersize=4)
            else:
                ax.plot(x + 0.3, r["mean"], "ko", markersize=4)
            if not comparison.empty:
                paper = comparison[(comparison["method"] == method) & (comparison["init"] == init)
                                   & (comparison["column"] == column)]
                if not paper.empty:
                    ax.plot(x + 0.3, paper.iloc[0]["paper"], "r*", markersize=10,
                            label="paper" if column == columns[0] else None)
        ax.set_xticks(range(len(groups)), ticks, fontsize=7)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_title(column, fontsize=9)
    for ax in axes[len(columns):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes[: len(columns)]:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab, strict=True):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 8), fontsize=8)
    fig.suptitle(title + "\ndots: draws (colour: training seed); black: mean and 95% t-interval; red star: paper",
                 fontsize=9)
    return fig


def summarize(*, config: SpreadExperiment) -> dict[str, Any]:
    """``<name>-summary.parquet``, ``<name>-paper.parquet`` and ``<name>-summary.png``
    from the table and the rows' seeds; each kept when unchanged."""
    store, name = ExperimentStore.of(config), config.name
    table = store.read_table()
    attrs = [store.read_attrs(int(r)) for r in table["row"]]
    frame = draws(table, attrs)
    summary = spread_summary(frame)
    comparison = paper_comparison(frame, summary)
    title = (f"{name}: {len(config.seeds)} training seeds x {config.n_targets} targets (labels "
             f"{list(config.labels)}) at {config.layer}, {config.n_vertices} vertices")
    written = write_summary(store, summary, lambda s: draw_spread(frame, s, comparison, title=title))
    paper = write_summary_table(store, "paper", comparison)
    return {**written, "paper_comparison": str(paper),
            "paper_verdicts": comparison["verdict"].tolist() if not comparison.empty else []}
