"""The approximation frontier on MNIST: how close to another digit an input can stay
while its first-layer features come within ε of a 7's.

The paper's row-2 vertices (§3.1), started from another digit, are "clearly not 7s" yet
classified as 7: collisions that hold only approximately. For each target (the MNIST
experiment's targets) and each budget ε of ``frontier.epsilons``, one row holds the
point closest to the target's ``other`` image (the first test image of another label)
whose relative feature error at ``layer`` (a first ReLU layer) is at most ε:
:func:`collide.comparisons.frontier.closest_within` (the exact QP by HiGHS for ε = 0, the
dual of a penalised QP by L-BFGS-B otherwise; see that module). Rows are points rows
(:class:`collide.results.points.PointsRecord`) claiming feature error ≤ ε, which the
engine evaluates: predicted class, its probability, float64 feature error, distances.

``summarize`` draws ``<name>-frontier.png``: each target's other image and target, then
one image per ε titled with ε, the predicted class and probability and the distance to
the other image; below, distance to the other image, its lower bound and the target
class's probability against ε.

The lower bound (column ``distance_lower_bound_inner``) is the dual bound over the convex
inner set {E(x) ≤ ε‖relu(c)‖}: no input of that set is closer to the other image. It is no
bound over every input whose true feature error is ≤ ε, which may come closer still.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from collide.comparisons.frontier import FAILED, closest_within
from collide.datasets.mnist import load_mnist
from collide.errors import LayerError
from collide.experiments import mnist
from collide.experiments.configs.frontier import FrontierExperiment
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.models.zoo import build_model, checkpoint_source, load_checkpoint
from collide.piecewise.linearise import affine_piece
from collide.results.figures import save_figure
from collide.results.points import PointsRecord
from collide.results.store import ExperimentStore

NAME = "frontier"
METHOD = "frontier"
SOLVER = "highs-qp"  # ε = 0; the other budgets name theirs in the "solver" column
# The dual bound holds over the convex inner set {E(x) ≤ εR} only (see collide.comparisons.frontier):
# an input whose true feature error is ≤ ε may lie closer to the other image. Stores written
# before the column said so call it "distance_lower_bound"; frontier_table renames it.
LOWER_BOUND = "distance_lower_bound_inner"
LOWER_BOUND_LABEL = "lower bound (convex inner set E ≤ ε)"
_OLD_LOWER_BOUND = "distance_lower_bound"


Config = FrontierExperiment
layers, prepare = mnist.layers, mnist.prepare


def validate(*, config: FrontierExperiment) -> None:
    """Fail before any work unless ``layer`` is a first ReLU layer of the architecture."""
    mnist.validate(config=config)
    piece = affine_piece(build_model(config.train.arch), config.layer, torch.full(mnist.INPUT_SHAPE, 0.5))
    if piece.region_jac.shape[0] != 0:
        raise LayerError(f"layer {config.layer!r} of {config.train.arch} has ReLUs or max pools before it: the "
                         "approximation frontier is convex only at a first ReLU layer; pick that layer (relu1)")


def plan(context: dict[str, Any], *, config: FrontierExperiment) -> list[Job]:
    """One job per target: its rows, one per ε."""
    n = len(config.frontier.epsilons)
    return [job(f"target-{k}-frontier", range(k * n, (k + 1) * n), example=example)
            for k, example in enumerate(context["targets"])]


def solve(job: Job, context: dict[str, Any], *, config: FrontierExperiment,
          progress: Progress = no_progress) -> None:
    """The job's frontier (every ε for one target), each point written as a points row."""
    model, meta = load_checkpoint(context["checkpoint"])
    model.eval()
    test = load_mnist(config.data_root, "test")
    example = job.spec["example"]
    target, other = test.images[example["target_index"]], test.images[example["other_index"]]
    progress("frontier", 0, 1)
    points = closest_within(model, config.layer, target, other, config=config.frontier)
    progress("frontier", 1, 1)
    with torch.no_grad():
        t_class = int(model(target.unsqueeze(0)).argmax())
        probs = torch.softmax(model(torch.stack([p.point.float() for p in points])), -1)
    for row, p, prob in zip(job.rows, points, probs, strict=True):
        if p.outcome == FAILED:
            raise RuntimeError(f"job {job.label}: the frontier's ε = {p.epsilon} point was not found "
                               "(HiGHS did not solve the exact QP)")
        PointsRecord(
            experiment=config.name, row=row, model=mnist.model_name(context, config.train.arch),
            model_source=checkpoint_source(context["checkpoint"], meta["sha256"]), layer=config.layer,
            method=METHOD, init="other", claim_rel_error=p.epsilon, config=config.to_dict(),
            config_digest=config.digest(), points=p.point.float().unsqueeze(0).numpy(),
            target=target.numpy(), init_image=other.numpy(),
            dataset_avg_distance=context["dataset_avg_distance"],
            columns={
                "epsilon": p.epsilon, "feature_error_bound": p.feature_error_bound,
                "distance_to_other": p.distance_to_other, LOWER_BOUND: p.distance_lower_bound_inner,
                "target_class_prob": float(prob[t_class]),
                "solver": SOLVER if p.epsilon == 0 else "lbfgsb-dual", "solver_outcome": p.outcome, "mu": p.mu,
                "solver_seconds": p.seconds, "target_index": example["target_index"],
                "init_index": example["other_index"], "checkpoint_sha256": meta["sha256"],
            },
        ).write(config.results_root)


def frontier_table(store: ExperimentStore) -> pd.DataFrame:
    """The frontier's table by row, its lower bound named :data:`LOWER_BOUND` (older stores too)."""
    table = store.read_table().sort_values("row")
    if _OLD_LOWER_BOUND in table.columns and LOWER_BOUND not in table.columns:
        table = table.rename(columns={_OLD_LOWER_BOUND: LOWER_BOUND})
    return table


FIGURE = "-frontier.png"
# Files :func:`summarize` writes beyond the table and figure, as suffixes of the name: a
# killed run's temporaries of them are found from here (engine.experiment_store).
OUTPUTS = (FIGURE,)


def draw_frontier(table: pd.DataFrame, images: dict[int, np.ndarray], others: dict[int, np.ndarray],
                  targets: dict[int, np.ndarray], *, title: str = "") -> Figure:
    """Per target: its other image, the target, then one point per ε; below, distance to
    the other image and the target class's probability against ε.

    Shapes:
        images[row], others[target_index], targets[target_index]: (1, H, W) in [0, 1]
    """
    groups = list(table.groupby("target_index", sort=False))
    n_cols = 2 + max(len(g) for _, g in groups)
    fig = Figure(figsize=(1.55 * n_cols, 1.9 * len(groups) + 2.8))
    grid = fig.add_gridspec(len(groups) + 1, n_cols, height_ratios=[1] * len(groups) + [1.4])
    for r, (t_index, g) in enumerate(groups):
        cells = [("other", others[t_index], f"init #{int(g['init_index'].iloc[0])}"),
                 ("target", targets[t_index], f"test #{t_index}")]
        cells += [(f"ε={e:g}", images[row], f"→{c} p={p:.2f}\nd_other={d:.2f}")
                  for e, row, c, p, d in zip(g["epsilon"], g["row"], g["pred_class"], g["samples_top_prob"],
                                             g["distance_to_other"], strict=True)]
        for col, (head, image, sub) in enumerate(cells):
            ax = fig.add_subplot(grid[r, col])
            ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{head}\n{sub}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    ax = fig.add_subplot(grid[len(groups), :])
    twin = ax.twinx()
    for t_index, g in groups:
        ax.plot(g["epsilon"], g["distance_to_other"], "o-", color="tab:blue", label=f"distance, #{t_index}")
        if LOWER_BOUND in g:  # NaN at ε = 0 (the exact QP needs no bound): not drawn there
            ax.plot(g["epsilon"], g[LOWER_BOUND], "v:", color="tab:cyan", label=f"{LOWER_BOUND_LABEL}, #{t_index}")
        twin.plot(g["epsilon"], g["target_class_prob"], "s--", color="tab:red", label=f"p(target class), #{t_index}")
    ax.set_xlabel("feature-error budget ε")
    ax.set_ylabel("L2 distance to the other image", color="tab:blue", fontsize=8)
    twin.set_ylabel("probability of the target's class", color="tab:red", fontsize=8)
    twin.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def summarize(*, config: FrontierExperiment) -> dict[str, Any]:
    """``<name>-frontier.png`` from the table and the stored points."""
    store, name = ExperimentStore.of(config), config.name
    table = frontier_table(store)
    images: dict[int, np.ndarray] = {}
    others: dict[int, np.ndarray] = {}
    targets: dict[int, np.ndarray] = {}
    for row, t_index in zip(table["row"], table["target_index"], strict=True):
        arrays, _ = store.read_row(int(row))
        images[int(row)] = arrays["points"][0]
        others[int(t_index)], targets[int(t_index)] = arrays["init"], arrays["target"]
    title = (f"{name}: closest point to another digit with feature error ≤ ε at {config.layer} "
             f"({config.train.arch})")
    path = save_figure(draw_frontier(table, images, others, targets, title=title), store.output(FIGURE))
    return {"frontier_figure": str(path)}
