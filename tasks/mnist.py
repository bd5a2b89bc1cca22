"""Tasks of the MNIST experiment: one call of :mod:`collide.experiments.mnist` or :mod:`collide.experiments.mnist_jobs` each."""

from __future__ import annotations

from typing import Any

from prefect import task

from collide.config import MnistExperiment
from collide.experiments import mnist as stages
from collide.experiments import mnist_jobs as jobs
from tasks._common import TASK_OPTIONS as _OPTIONS
from tasks._common import logging_progress


@task(name="prepare-data", **_OPTIONS)
def prepare_data(config: MnistExperiment) -> dict[str, Any]:
    return stages.prepare_data(config=config)


@task(name="train-model", **_OPTIONS)
def train_model(config: MnistExperiment) -> dict[str, Any]:
    return jobs.train_model(config=config, progress=logging_progress())


@task(name="plan-jobs", **_OPTIONS)
def plan_jobs(checkpoint: str, config: MnistExperiment) -> list[dict[str, Any]]:
    return jobs.plan(checkpoint, config=config)


@task(name="polytope-job", task_run_name="polytope-target-{job[target]}-rows-{job[rows]}", **_OPTIONS)
def polytope_job(job: dict[str, Any], checkpoint: str, config: MnistExperiment) -> list[dict[str, Any]]:
    return jobs.polytope_job(job, checkpoint, config=config, progress=logging_progress())
