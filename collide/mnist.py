"""The MNIST experiment (paper §3.1, Tables 1-2) as pure stages.

Each stage is a plain function of keys (paths, row numbers) and ``*, config``; it reads
its inputs from disk, writes a fixed region of the results store, and returns a small
dict. The Prefect flow wraps each stage in a task; :func:`run` chains them in plain
Python. Both produce the same files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collide.config import MnistExperiment, resolve_device
from collide.data import ensure_mnist, load_mnist
from collide.errors import CheckpointError, DataError
from collide.exact import OPTIMAL, solve_exact
from collide.figures import vertex_grid
from collide.models import build_model, checkpoint_path, load_checkpoint, save_checkpoint, train
from collide.objective import feature_rel_error, max_nonpositive_violation, nonpositive_units
from collide.polytope import (
    avg_pairwise_distance,
    combine,
    dataset_avg_distance,
    evaluate,
    sample_weights,
)
from collide.resume import torch_threads
from collide.store import read_row, table_from_store, table_path, write_row, write_table
from collide.taps import preactivation, resolve_layer
from collide.vertices import solve_gradient

Progress = Callable[[str, int, int], None]
DATASET = "mnist"


def _noop(_stage: str, _done: int, _total: int) -> None:
    pass


def validate(*, config: MnistExperiment) -> None:
    """Fail before any work if the layer does not exist in the architecture."""
    resolve_layer(build_model(config.train.arch), config.layer)


def prepare_data(*, config: MnistExperiment) -> dict[str, Any]:
    """Check the config against the model, then make sure MNIST is on disk."""
    validate(config=config)
    files = ensure_mnist(config.data_root, allow_download=config.allow_download)
    return {"data_root": config.data_root, "files": {k: str(v) for k, v in files.items()}}


def train_model(*, config: MnistExperiment, progress: Progress = _noop) -> dict[str, Any]:
    """Train the classifier, or reuse the checkpoint trained with the same settings."""
    path = checkpoint_path(config.checkpoint_dir, DATASET, config.train)
    if path.exists():
        _, meta = load_checkpoint(path)
        reused = True
    else:
        train_split = load_mnist(config.data_root, "train")
        test_split = load_mnist(config.data_root, "test")

        def report(epoch: int, epochs: int, _loss: float) -> None:
            progress("train", epoch, epochs)

        model, meta = train(
            train_split, test_split, config=config.train,
            device=resolve_device(config.device), progress=report,
        )
        if meta["test_accuracy"] < config.train.min_accuracy:
            raise CheckpointError(
                f"{config.train.arch} reached test accuracy {meta['test_accuracy']:.4f}, below the "
                f"required {config.train.min_accuracy:.4f}: train longer (train.epochs) or lower "
                "train.min_accuracy; no checkpoint was saved"
            )
        meta = save_checkpoint(model, meta, path)
        reused = False
    return {
        "checkpoint": str(path),
        "sha256": meta["sha256"],
        "test_accuracy": meta["test_accuracy"],
        "reused": reused,
    }


def pick_examples(checkpoint: str, *, config: MnistExperiment) -> dict[str, int]:
    """The target (first correctly classified test image of ``target_label``) and the
    ``other`` init (first test image of another label)."""
    model, _ = load_checkpoint(checkpoint)
    test = load_mnist(config.data_root, "test")
    with torch.no_grad():
        pred = model(test.images).argmax(1)
    hits = torch.nonzero((test.labels == config.target_label) & (pred == test.labels)).flatten()
    if len(hits) == 0:
        raise DataError(f"no test image of label {config.target_label} is classified correctly")
    target = int(hits[0])
    others = torch.nonzero(test.labels != config.target_label).flatten()
    return {"target_index": target, "other_index": int(others[0])}


def _row_attrs(
    row: int, checkpoint: str, examples: dict[str, int], units: torch.Tensor, config: MnistExperiment
) -> dict[str, Any]:
    spec = config.row_spec(row)
    _, meta = load_checkpoint(checkpoint)
    return {
        "experiment": config.name,
        "row": row,
        "model": f"{DATASET}-{config.train.arch}",
        "checkpoint": checkpoint,
        "checkpoint_sha256": meta["sha256"],
        "test_accuracy": meta["test_accuracy"],
        "layer": config.layer,
        "method": spec.method,
        "init": spec.init,
        "loss": config.gradient.loss if spec.method == "gradient" else "lp",
        "target_index": examples["target_index"],
        "init_index": examples["target_index"] if spec.init == "target" else examples["other_index"],
        "units": units.tolist(),
        "sampler": config.sample.sampler,
        "seed": config.seed,
        "config": config.to_dict(),
        "config_digest": config.digest(),
    }


def solve_rows(
    rows: list[int],
    checkpoint: str,
    examples: dict[str, int],
    *,
    config: MnistExperiment,
    progress: Progress = _noop,
) -> list[dict[str, Any]]:
    """Find the vertices of ``rows`` and write each row's group (vertices, target, init).

    All gradient rows go through the solver as one batch; exact rows are solved one LP
    per vertex.
    """
    model, _ = load_checkpoint(checkpoint)
    test = load_mnist(config.data_root, "test")
    target = test.images[examples["target_index"]]
    with torch.no_grad():
        target_pre = preactivation(model, target.unsqueeze(0), config.layer)[0]
    units = nonpositive_units(target_pre, config.n_vertices)
    specs = {r: config.row_spec(r) for r in rows}
    inits = {
        r: test.images[examples["target_index"] if s.init == "target" else examples["other_index"]]
        for r, s in specs.items()
    }
    v = config.n_vertices
    summaries = []
    grad_rows = [r for r in rows if specs[r].method == "gradient"]
    if grad_rows:
        result = solve_gradient(
            model, config.layer,
            target_pre.expand(v * len(grad_rows), -1),
            torch.stack([inits[r] for r in grad_rows]).repeat_interleave(v, 0),
            units.repeat(len(grad_rows)),
            config=config.gradient,
            device=resolve_device(config.device),
            progress=lambda s, n, _d: progress("vertices", s, n),
        )
        for k, r in enumerate(grad_rows):
            part = slice(k * v, (k + 1) * v)
            solver = {
                "seconds": result.seconds,
                "steps": result.steps[part].tolist(),
                "converged": bool(result.converged[part].all()),
                "outcomes": ["converged" if c else "max_steps" for c in result.converged[part].tolist()],
            }
            summaries.append(_write_solution(r, result.vertices[part], target, inits[r], solver,
                                             checkpoint, examples, units, config))
    exact_rows = [r for r in rows if specs[r].method == "exact"]
    for k, r in enumerate(exact_rows):
        ex = solve_exact(model, config.layer, target, inits[r], units, config=config.exact)
        solver = {
            "seconds": ex.seconds,
            "converged": all(o == OPTIMAL for o in ex.outcomes),
            "outcomes": list(ex.outcomes),
            "input_dim": ex.input_dim,
            "n_positive": ex.n_positive,
            "rank_positive": ex.rank_positive,
            "dim_bound": ex.dim_bound,
        }
        summaries.append(_write_solution(r, ex.vertices, target, inits[r], solver,
                                         checkpoint, examples, units, config))
        progress("exact", k + 1, len(exact_rows))
    return summaries


def _write_solution(
    row: int, vertices: torch.Tensor, target: torch.Tensor, init: torch.Tensor, solver: dict[str, Any],
    checkpoint: str, examples: dict[str, int], units: torch.Tensor, config: MnistExperiment,
) -> dict[str, Any]:
    attrs = _row_attrs(row, checkpoint, examples, units, config)
    attrs["solver"] = solver
    write_row(
        config.results_root, config.name, row,
        {
            "vertices": vertices.numpy().astype(np.float32),
            "target": target.numpy().astype(np.float32),
            "init": init.numpy().astype(np.float32),
        },
        attrs,
    )
    return {"row": row, "method": attrs["method"], "init": attrs["init"], **solver}


def evaluate_row(row: int, *, config: MnistExperiment) -> dict[str, Any]:
    """Draw ``n_samples`` points of the row's polytope, classify them, store the metrics."""
    arrays, attrs = read_row(config.results_root, config.name, row)
    model, meta = load_checkpoint(attrs["checkpoint"])
    if meta["sha256"] != attrs["checkpoint_sha256"]:
        raise CheckpointError(
            f"row {row} was solved with checkpoint {attrs['checkpoint_sha256'][:12]}..., but "
            f"{attrs['checkpoint']} is now {meta['sha256'][:12]}...: rerun the whole experiment"
        )
    vertices = torch.from_numpy(arrays["vertices"])
    target = torch.from_numpy(arrays["target"])
    usable = torch.isfinite(vertices.flatten(1)).all(1)
    good = vertices[usable]
    if len(good) == 0:
        raise DataError(f"row {row} has no usable vertex (solver outcomes {attrs['solver']['outcomes']})")
    gen = torch.Generator().manual_seed(config.sample.seed + row)
    weights = sample_weights(config.sample.n_samples, len(good), sampler=config.sample.sampler, generator=gen)
    samples = combine(weights, good)
    ev = evaluate(model, samples, target, device=resolve_device(config.device))
    with torch.no_grad():
        t_pre = preactivation(model, target.unsqueeze(0), config.layer)
        v_pre = preactivation(model, good, config.layer)
        s_pre = preactivation(model, samples, config.layer)
    test = load_mnist(config.data_root, "test")
    full_weights = np.zeros((len(weights), len(vertices)), dtype=np.float32)
    full_weights[:, usable.numpy()] = weights.numpy()
    metrics = {
        "experiment": config.name,
        "row": row,
        "method": attrs["method"],
        "model": attrs["model"],
        "layer": attrs["layer"],
        "n_vertices": int(len(good)),
        "n_samples": config.sample.n_samples,
        "success_rate": ev.success_rate,
        "target_top_prob": ev.target_top_prob,
        "samples_top_prob": ev.samples_top_prob,
        "dataset_avg_distance": dataset_avg_distance(
            test.images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed
        ),
        "vertex_avg_distance": avg_pairwise_distance(good),
        "max_feature_rel_error": float(feature_rel_error(v_pre, t_pre).max()),
        "max_nonpositive": float(max_nonpositive_violation(v_pre, t_pre).max()),
        "samples_max_feature_rel_error": float(feature_rel_error(s_pre, t_pre).max()),
        "init": attrs["init"],
        "loss": attrs["loss"],
        "sampler": config.sample.sampler,
        "target_index": attrs["target_index"],
        "init_index": attrs["init_index"],
        "target_class": ev.target_class,
        "test_accuracy": attrs["test_accuracy"],
        "checkpoint_sha256": attrs["checkpoint_sha256"],
        "solver_seconds": attrs["solver"]["seconds"],
        "converged": attrs["solver"]["converged"],
        "outcomes": ",".join(attrs["solver"]["outcomes"]),
        "input_dim": attrs["solver"].get("input_dim", int(target.numel())),
        "n_positive": attrs["solver"].get("n_positive", int((t_pre > 0).sum())),
        "rank_positive": attrs["solver"].get("rank_positive", -1),
        "dim_bound": attrs["solver"].get("dim_bound", -1),
        "config_digest": attrs["config_digest"],
    }
    write_row(
        config.results_root, config.name, row,
        {
            "sample_weights": full_weights,
            "sample_pred": ev.sample_pred.numpy().astype(np.int64),
            "sample_prob": ev.sample_prob.numpy().astype(np.float32),
        },
        {"target_class": ev.target_class, "metrics": metrics},
        keep_existing=True,
    )
    return metrics


def write_outputs(*, config: MnistExperiment) -> dict[str, str]:
    """Table 2 as Parquet and Table 1 as PNG, rebuilt from the Zarr store alone."""
    frame = table_from_store(config.results_root, config.name)
    parquet = write_table(frame, table_path(config.results_root, config.name))
    targets, vertices, labels = [], [], []
    for row in frame["row"]:
        arrays, attrs = read_row(config.results_root, config.name, int(row))
        targets.append(arrays["target"])
        vertices.append(arrays["vertices"])
        labels.append(f"row {row}: {attrs['method']}\ninit={attrs['init']}")
    figure = vertex_grid(
        targets, vertices, labels, Path(config.results_root) / f"{config.name}-table1.png",
        title=f"{config.name}: polytopes colliding with the target at {config.layer}",
    )
    return {"table": str(parquet), "figure": str(figure)}


def run(*, config: MnistExperiment, progress: Progress = _noop) -> dict[str, Any]:
    """The whole experiment in plain Python, stage after stage, as the flow runs it."""
    with torch_threads(config.threads):  # as in a flow's jobs: the count shapes the last bits
        return _run(config=config, progress=progress)


def _run(*, config: MnistExperiment, progress: Progress) -> dict[str, Any]:
    start = time.perf_counter()
    prepare_data(config=config)
    trained = train_model(config=config, progress=progress)
    examples = pick_examples(trained["checkpoint"], config=config)
    grad = [r for r, s in enumerate(config.rows) if s.method == "gradient"]
    exact = [r for r, s in enumerate(config.rows) if s.method == "exact"]
    if grad:
        solve_rows(grad, trained["checkpoint"], examples, config=config, progress=progress)
    for r in exact:
        solve_rows([r], trained["checkpoint"], examples, config=config, progress=progress)
    for r in range(len(config.rows)):
        evaluate_row(r, config=config)
        progress("evaluate", r + 1, len(config.rows))
    outputs = write_outputs(config=config)
    return {**outputs, "test_accuracy": trained["test_accuracy"], "seconds": time.perf_counter() - start}
