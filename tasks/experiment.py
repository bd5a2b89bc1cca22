"""Tasks of every experiment: one call of :mod:`collide.experiments.engine` each."""

from __future__ import annotations

from typing import Any

from prefect import task

from collide.experiments import engine
from collide.experiments.contract import Job
from collide.experiments.registry import experiment as find
from tasks._common import TASK_OPTIONS as _OPTIONS
from tasks._common import logging_progress


@task(name="prepare", **_OPTIONS)
def prepare(experiment: str, config: Any) -> dict[str, Any]:
    return engine.prepare(find(experiment), config=config, progress=logging_progress())


@task(name="plan-jobs", **_OPTIONS)
def plan(experiment: str, context: dict[str, Any], config: Any) -> list[Job]:
    return engine.plan(find(experiment), context, config=config)


@task(name="polytope-job", task_run_name="{job.label}", **_OPTIONS)
def run_job(job: Job, experiment: str, context: dict[str, Any], config: Any) -> list[dict[str, Any]]:
    return engine.run_job(find(experiment), job, context, config=config, progress=logging_progress())


@task(name="finished-jobs", **_OPTIONS)
def finished_jobs(experiment: str, jobs: list[Job], context: dict[str, Any], config: Any) -> list[int]:
    return engine.finished_jobs(find(experiment), jobs, context, config=config)


@task(name="reuse-finished-jobs", **_OPTIONS)
def reuse_jobs(jobs: list[Job], experiment: str, config: Any) -> list[list[dict[str, Any]]]:
    return [engine.read_back(find(experiment), job, config=config) for job in jobs]


@task(name="write-outputs", **_OPTIONS)
def outputs(experiment: str, config: Any, n_rows: int) -> dict[str, Any]:
    return engine.outputs(find(experiment), config=config, n_rows=n_rows)
