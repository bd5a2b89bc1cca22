"""Tasks of the MNIST experiment, one per stage of :mod:`collide.mnist`."""

from __future__ import annotations

from typing import Any

from prefect import task

from collide import mnist as stages
from collide import mnist_jobs as jobs
from collide.config import MnistExperiment
from tasks._common import TASK_OPTIONS as _OPTIONS
from tasks._common import logging_progress


@task(name="prepare-data", **_OPTIONS)
def prepare_data(config: MnistExperiment) -> dict[str, Any]:
    return stages.prepare_data(config=config)


@task(name="train-model", **_OPTIONS)
def train_model(config: MnistExperiment) -> dict[str, Any]:
    return jobs.train_model(config=config, progress=logging_progress())


@task(name="pick-examples", **_OPTIONS)
def pick_examples(checkpoint: str, config: MnistExperiment) -> dict[str, int]:
    return stages.pick_examples(checkpoint, config=config)


@task(name="solve-vertices", **_OPTIONS)
def solve_rows(
    rows: list[int], checkpoint: str, examples: dict[str, int], config: MnistExperiment
) -> list[dict[str, Any]]:
    return stages.solve_rows(rows, checkpoint, examples, config=config, progress=logging_progress())


@task(name="evaluate-polytope", **_OPTIONS)
def evaluate_row(row: int, config: MnistExperiment) -> dict[str, Any]:
    return stages.evaluate_row(row, config=config)


@task(name="write-tables", **_OPTIONS)
def write_outputs(config: MnistExperiment) -> dict[str, str]:
    return stages.write_outputs(config=config)


@task(name="plan-jobs", **_OPTIONS)
def plan_jobs(checkpoint: str, config: MnistExperiment) -> list[dict[str, Any]]:
    return jobs.plan(checkpoint, config=config)


@task(name="polytope-job", task_run_name="polytope-target-{job[target]}-rows-{job[rows]}", **_OPTIONS)
def polytope_job(job: dict[str, Any], checkpoint: str, config: MnistExperiment) -> list[dict[str, Any]]:
    return jobs.polytope_job(job, checkpoint, config=config, progress=logging_progress())
