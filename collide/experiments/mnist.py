"""The MNIST experiment (paper §3.1, Tables 1-2) as pure stages.

Each stage is a plain function of keys (paths, row numbers) and ``*, config``; it reads
its inputs from disk, writes a fixed region of the results store, and returns a small
dict. The Prefect flow wraps each stage in a task; :func:`run` chains them in plain
Python. Both produce the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from collide.config import MnistExperiment, resolve_device
from collide.datasets.mnist import ensure_mnist, load_mnist
from collide.errors import CheckpointError, DataError
from collide.models.zoo import (
    build_model,
    checkpoint_path,
    checkpoint_source,
    load_checkpoint,
    save_checkpoint,
    train,
)
from collide.objective import nonpositive_units
from collide.polytope import dataset_avg_distance
from collide.precision import full_precision
from collide.results import evaluation
from collide.results.store import write_row
from collide.solvers.exact import OPTIMAL, solve_exact
from collide.solvers.gradient import solve_gradient
from collide.solvers.paper import solve_paper
from collide.taps import preactivation, resolve_layer
from collide.validity import criterion_for

Progress = Callable[[str, int, int], None]
DATASET = "mnist"


def _noop(_stage: str, _done: int, _total: int) -> None:
    pass


def validate(*, config: MnistExperiment) -> None:
    """Fail before any work if the layer does not exist in the architecture, or the
    paper-scheme rows have no learning rate for it."""
    resolve_layer(build_model(config.train.arch), config.layer)
    if any(r.method == "paper" for r in config.rows):
        config.paper.for_model(config.train.arch)


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


def _row_attrs(row: int, context: dict[str, Any], config: MnistExperiment) -> dict[str, Any]:
    spec = config.row_spec(row)
    checkpoint, meta, examples = context["checkpoint"], context["meta"], context["examples"]
    return {
        "model_source": checkpoint_source(checkpoint, meta["sha256"]),
        "dataset_avg_distance": context["distance"],
        "pixel_scale": 1.0,
        "experiment": config.name,
        "row": row,
        "model": f"{DATASET}-{config.train.arch}",
        "checkpoint": checkpoint,
        "checkpoint_sha256": meta["sha256"],
        "test_accuracy": meta["test_accuracy"],
        "layer": config.layer,
        "method": spec.method,
        "init": spec.init,
        "loss": {"gradient": config.gradient.loss, "exact": "lp", "paper": "paper"}[spec.method],
        "criterion": criterion_for(spec.method, getattr(config, spec.method)).to_dict(),
        "target_index": examples["target_index"],
        "init_index": examples["target_index"] if spec.init == "target" else examples["other_index"],
        "units": context["units"].tolist(),
        "sampler": config.sample.sampler,
        "seed": config.seed,
        "config": config.to_dict(),
        "config_digest": config.digest(),
        **({"paper_lr": config.paper.for_model(config.train.arch).lr} if spec.method == "paper" else {}),
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

    The gradient rows go through the solver as one batch, the paper-scheme rows as
    another; exact rows are solved one LP per vertex.
    """
    model, meta = load_checkpoint(checkpoint)
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
    context = {
        "checkpoint": checkpoint, "meta": meta, "examples": examples, "units": units,
        "distance": dataset_avg_distance(test.images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed),
    }
    device = resolve_device(config.device)
    summaries = []
    for method in ("gradient", "paper"):
        batch = [r for r in rows if specs[r].method == method]
        if not batch:
            continue
        problem = (
            model, config.layer, target_pre.expand(v * len(batch), -1),
            torch.stack([inits[r] for r in batch]).repeat_interleave(v, 0), units.repeat(len(batch)),
        )

        def report(step: int, total: int, _stopped: int, method: str = method) -> None:
            progress(f"vertices ({method})", step, total)

        with full_precision():
            result = (solve_gradient(*problem, config=config.gradient, device=device, progress=report)
                      if method == "gradient" else
                      solve_paper(*problem, config=config.paper.for_model(config.train.arch), device=device,
                                  progress=report))
        for k, r in enumerate(batch):
            part = slice(k * v, (k + 1) * v)
            summaries.append(_write_solution(r, result.vertices[part], target, inits[r], result.summary(part),
                                             context, config))
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
            "dim_upper_bound": ex.dim_upper_bound,
        }
        summaries.append(_write_solution(r, ex.vertices, target, inits[r], solver, context, config))
        progress("exact", k + 1, len(exact_rows))
    return summaries


def _write_solution(
    row: int, vertices: torch.Tensor, target: torch.Tensor, init: torch.Tensor, solver: dict[str, Any],
    context: dict[str, Any], config: MnistExperiment,
) -> dict[str, Any]:
    attrs = _row_attrs(row, context, config)
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


# Every experiment evaluates and writes its rows the same way, from the store.
evaluate_row = evaluation.evaluate_experiment_row
write_outputs = evaluation.write_experiment_outputs
