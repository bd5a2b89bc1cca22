"""Every experiment as one Prefect flow: `python -m flows.experiment mnist`.

prepare (data, model, patch store, index) -> plan -> the polytope jobs fanned out over
Dask -> the table, figure and summary, published as artifacts. A job reuses every stage
already finished with the same inputs, so a rerun after a crash redoes only what was cut
off, and a rerun of a finished experiment computes and writes nothing: its jobs are read
back in the flow's own process, and no Dask cluster starts.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger, unmapped

import flows  # noqa: F401  (telemetry off before prefect loads)
from collide.experiments import engine
from collide.experiments.registry import experiment as find
from collide.results.cells import reused, run_lines
from flows.runner import dask_runner
from tasks import experiment as t
from tasks import outputs as o


@flow(name="experiment", flow_run_name="{experiment}", log_prints=True, task_runner=dask_runner())
def experiment_flow(experiment: str = "mnist", config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the experiment called ``experiment`` end to end.

    Args:
        experiment: a name of :data:`collide.experiments.registry.EXPERIMENTS`.
        config: fields of that experiment's config to override.
    """
    module = find(experiment)
    # Folders absolute here, in the submitting process: a Dask worker started in another
    # folder then reads and writes the same files (on the same filesystem).
    cfg = module.Config.from_request(config or {}).absolute()
    engine.validate(module, config=cfg)  # bad input fails here, in the flow: no task, no retry
    with engine.lock(cfg, module):  # one run per experiment: a second one fails at once, naming this one
        return _run(experiment, module, cfg)


def _run(experiment: str, module: Any, cfg: Any) -> dict[str, Any]:
    logger = get_run_logger()
    logger.info("experiment %s (%s, config %s), results in %s", cfg.name, experiment, cfg.digest(), cfg.results_root)
    context = t.prepare(experiment, cfg)
    if context.get("test_accuracy") is not None:
        from flows.cli import accuracy_text  # the profile's is a dict of two models: %.4f would fail on it

        accuracy = accuracy_text(context["test_accuracy"])
        if context.get("checkpoint"):
            logger.info("model test accuracy %s (%s checkpoint %s, data %s)", accuracy,
                        context.get("origin") or ("reused" if context.get("reused") else "trained"),
                        context["checkpoint"], context.get("dataset", "MNIST"))
        else:  # one model per seed (thin, spread, ...): each its own checkpoint, named in its rows
            logger.info("models' test accuracy %s", accuracy)
    if context.get("random_weights"):
        logger.warning("the model has RANDOM weights, as asked: the results say nothing about the paper's model")
    for note in context.get("notes", []):
        logger.warning("%s", note)
    jobs = t.plan(experiment, context, cfg)
    # Jobs already finished are read back here: a rerun of a finished experiment starts no cluster.
    finished = set(t.finished_jobs(experiment, jobs, context, cfg))
    todo = [job for k, job in enumerate(jobs) if k not in finished]
    if finished:
        logger.info("%d of %d polytope jobs already finished: reading them back", len(finished), len(jobs))
    if todo:
        logger.info("fanning out %d polytope jobs", len(todo))
    running = t.run_job.map(todo, experiment=unmapped(experiment), context=unmapped(context),
                            config=unmapped(cfg)) if todo else None
    kept = iter(t.reuse_jobs([jobs[k] for k in sorted(finished)], experiment, cfg) if finished else [])
    ran = iter(running.result() if running is not None else [])
    done = [next(kept) if k in finished else next(ran) for k in range(len(jobs))]
    rows = [row for job in done for row in job]
    for m in rows:
        if m.get("repaired"):
            logger.warning("row %s was damaged (%s): recomputed", m["row"], m["repaired"])
    for line in run_lines(rows):
        logger.info("%s", line)
    written = t.outputs(experiment, cfg, len(rows))
    logger.info("%s %s and %s", "kept" if written["reused"] else "wrote", written["table"], written["figure"])
    if "summary" in written:
        logger.info("summary %s (%s)", written["summary"], "kept" if written["summary_reused"] else "written")
    o.publish(cfg.results_root, cfg.name)
    return {**written, **{k: context[k] for k in engine.REPORTED if k in context},
            "random_weights": bool(context.get("random_weights")), "notes": context.get("notes", []),
            "reused_rows": sum(reused(r) for r in rows)}


if __name__ == "__main__":
    experiment_flow(sys.argv[1] if len(sys.argv) > 1 else "mnist")
