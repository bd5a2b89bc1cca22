"""The MNIST experiment as resumable polytope jobs, one or many targets.

A *job* is one target's gradient rows or its paper-scheme rows (each solved as one
batch) or one of its exact rows.
It solves and evaluates its rows with the stages of :mod:`collide.experiments.mnist`, skipping a
stage whose key (:mod:`collide.results.resume`) is already on the row, and writes only its own
rows. Jobs are independent: the flow fans them out over Dask, :func:`run` runs them one
after another, and both write the same rows.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from collide._io import file_digest
from collide.config import MnistExperiment
from collide.datasets.mnist import load_mnist, mnist_files
from collide.errors import DataError
from collide.experiments import mnist
from collide.models.zoo import load_checkpoint
from collide.results.resume import is_done, mark_done, prune_rows, stage_key, torch_threads
from collide.results.store import read_row
from collide.results.tables import write_outputs

Progress = mnist.Progress


def train_model(*, config: MnistExperiment, progress: Progress = mnist._noop) -> dict[str, Any]:
    """:func:`mnist.train_model` with ``config.threads`` torch threads, wherever it runs."""
    with torch_threads(config.threads):
        return mnist.train_model(config=config, progress=progress)


def pick_targets(checkpoint: str, *, config: MnistExperiment) -> list[dict[str, int]]:
    """Each target's test index and its ``other`` init: the first test image of another
    label. With ``targets_per_class == 0``, the single target of :func:`mnist.pick_examples`."""
    if config.targets_per_class == 0:
        return [mnist.pick_examples(checkpoint, config=config)]
    model, _ = load_checkpoint(checkpoint)
    test = load_mnist(config.data_root, "test")
    with torch.no_grad():
        pred = model(test.images).argmax(1)
    targets = []
    for label in range(10):
        hits = torch.nonzero((test.labels == label) & (pred == test.labels)).flatten()
        if len(hits) < config.targets_per_class:
            raise DataError(
                f"only {len(hits)} test images of label {label} are classified correctly, fewer than "
                f"targets_per_class={config.targets_per_class}: lower targets_per_class"
            )
        other = int(torch.nonzero(test.labels != label).flatten()[0])
        targets += [{"target_index": int(h), "other_index": other} for h in hits[: config.targets_per_class]]
    return targets


def plan(checkpoint: str, *, config: MnistExperiment) -> list[dict[str, Any]]:
    """The jobs of the experiment, each ``{"target", "rows", "examples"}``.

    Rows numbered beyond this config's rows (left by an earlier config with more
    targets) are removed, so the table holds this config's rows only.
    """
    with torch_threads(config.threads):
        targets = pick_targets(checkpoint, config=config)
    prune_rows(config.results_root, config.name, config.n_rows)
    n = len(config.rows)
    jobs = []
    for k, examples in enumerate(targets):
        rows = range(k * n, (k + 1) * n)
        for method in ("gradient", "paper"):  # each solved as one batch
            batch = [r for r in rows if config.row_spec(r).method == method]
            if batch:
                jobs.append({"target": k, "rows": batch, "examples": examples})
        jobs += [{"target": k, "rows": [r], "examples": examples}
                 for r in rows if config.row_spec(r).method == "exact"]
    return jobs


def _solve_key(row: int, checkpoint_sha256: str, data: str, examples: dict[str, int],
               config: MnistExperiment) -> str:
    return stage_key("solve", {
        "config": config.digest(), "row": row, "examples": examples,
        "checkpoint_sha256": checkpoint_sha256, "data": data,
    })


def polytope_job(
    job: dict[str, Any], checkpoint: str, *, config: MnistExperiment, progress: Progress = mnist._noop
) -> list[dict[str, Any]]:
    """Solve and evaluate the rows of one job, reusing each stage whose key matches.

    The rows of a job are solved together or not at all: a gradient batch redone in
    part could differ in the last bits from the batch done whole.
    """
    rows, examples = list(job["rows"]), dict(job["examples"])
    root, name = config.results_root, config.name
    _, meta = load_checkpoint(checkpoint)
    files = mnist_files(config.data_root)
    if files is None:
        raise DataError(f"MNIST not found in {config.data_root}: run the prepare-data stage first")
    data = file_digest([files["test_images"], files["test_labels"]])
    solve = {r: _solve_key(r, meta["sha256"], data, examples, config) for r in rows}
    evaluate = {r: stage_key("evaluate", {"solve": solve[r]}) for r in rows}
    with torch_threads(config.threads):
        solved = not all(is_done(root, name, r, "solve", solve[r]) for r in rows)
        if solved:
            mnist.solve_rows(rows, checkpoint, examples, config=config, progress=progress)
            for r in rows:
                mark_done(root, name, r, "solve", solve[r])
        out = []
        for r in rows:
            evaluated = not is_done(root, name, r, "evaluate", evaluate[r])
            if evaluated:
                mnist.evaluate_row(r, config=config)
                mark_done(root, name, r, "evaluate", evaluate[r])
            _, attrs = read_row(root, name, r)
            out.append({**attrs["metrics"], "solved": solved, "evaluated": evaluated})
    return out


def run(*, config: MnistExperiment, progress: Progress = mnist._noop) -> dict[str, Any]:
    """Every job one after another in plain Python, then the outputs: what the flow does."""
    start = time.perf_counter()
    mnist.prepare_data(config=config)
    trained = train_model(config=config, progress=progress)
    jobs = plan(trained["checkpoint"], config=config)
    rows = []
    for k, job in enumerate(jobs):
        rows += polytope_job(job, trained["checkpoint"], config=config, progress=progress)
        progress("jobs", k + 1, len(jobs))
    outputs = write_outputs(config.results_root, config.name)
    return {**outputs, "test_accuracy": trained["test_accuracy"], "rows": rows,
            "seconds": time.perf_counter() - start}
