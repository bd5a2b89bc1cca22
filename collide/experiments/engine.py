"""The one experiment engine: plan keyed polytope jobs, run each once, rebuild the outputs.

An experiment is a module that satisfies :class:`collide.experiments.contract.Experiment`
(listed in :mod:`collide.experiments.registry`):

- ``Config``: its frozen config class, a subclass of
  :class:`~collide.experiments.contract.ExperimentConfig` (``from_dict``, ``digest``,
  ``results_root``, ``name``);
- ``validate(*, config)``: fails on bad input before any work;
- ``prepare(*, config, progress) -> dict``: the shared work every job needs (data,
  model, patch store, index), each piece reused when already on disk; a JSON-able
  context whose ``"inputs"`` names what the jobs' results depend on (file hashes);
- ``plan(context, *, config) -> list[Job]``: the jobs
  (:class:`~collide.experiments.contract.Job`: label, rows, and a JSON-able ``spec``:
  everything beyond the config and context that its rows depend on);
- ``solve(job, context, *, config, progress)``: finds the vertices of the job's rows and
  writes each row group (arrays and attrs of the storage contract);
- optionally ``summarize(*, config) -> dict``: outputs beyond the table and figure.

The engine gives each row two stage keys (:mod:`collide.results.resume`): ``solve``
hashes the config digest, the code version, the context's inputs, the job's spec and
the row; ``evaluate`` hashes the solve key. A stage whose key is on the row is skipped,
so a rerun of a finished experiment computes nothing and writes nothing (a row whose
files no longer match its manifest is removed and recomputed), and a run
killed at any moment (rows are replaced atomically, keys written after their results)
redoes on rerun only the stage that was cut off. Jobs are independent: the Prefect flow
fans them out over Dask, :func:`run` runs them one after another, and both write the
same rows.

Both hand the jobs a config whose folders are absolute
(:meth:`~collide.experiments.contract.ExperimentConfig.absolute`), and :func:`prepare`
records the files every job reads (``context["shared"]``): a job on a Dask worker that
cannot see one of them fails at once, saying so (:func:`collide.workers.require_visible`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from collide.config import resolve_device
from collide.errors import ConfigError, InternalError
from collide.experiments.contract import Experiment, ExperimentConfig, Job, Progress, no_progress
from collide.results.cells import reused
from collide.results.evaluation import evaluate_row
from collide.results.resume import drop_damaged, is_done, mark_done, prune_rows, row_keys, stage_key
from collide.results.store import ExperimentStore
from collide.results.tables import write_outputs
from collide.threads import job_threads
from collide.workers import require_visible

__all__ = ["Progress", "no_progress"]  # re-exported: callers of the engine pass them

log = logging.getLogger(__name__)


def _threads(config: ExperimentConfig) -> contextlib.AbstractContextManager[None]:
    n = getattr(config, "threads", None)
    return job_threads(n) if n else contextlib.nullcontext()


def check_results_root(root: str | Path) -> None:
    """Fail unless ``root`` is a folder this process can write, or can be created as one.

    Creates nothing: bad input leaves the disk as it was. A plain file, a read-only
    folder, or a parent that is a file or read-only is a :class:`ConfigError` naming
    the path (never an ``OSError`` halfway through a run, never retried)."""
    path = Path(root)
    try:
        probe = path
        while not os.path.lexists(probe):  # the nearest part of the path that exists
            probe = probe.parent
        is_dir = probe.is_dir()
        writable = os.access(probe, os.W_OK | os.X_OK)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"results_root: {str(path)[:200]!r} cannot be used ({exc}): pass another "
                          "--results-root") from None
    if probe == path and not is_dir:
        raise ConfigError(f"results_root: {path} is a file, not a folder: pass another --results-root")
    if not is_dir:
        raise ConfigError(f"results_root: {path} cannot be created: {probe} is a file, not a folder; pass another "
                          "--results-root")
    if not writable:
        what = f"{path} is not writable" if probe == path else f"{path} cannot be created: {probe} is not writable"
        raise ConfigError(f"results_root: {what} by this user (read-only, or another's): pass another --results-root")
    too_long = [p for p in path.parts if len(os.fsencode(p)) > 255]
    if too_long:
        raise ConfigError(f"results_root: the folder name {too_long[0][:40]!r}... is longer than 255 bytes")


def validate(experiment: Experiment, *, config: ExperimentConfig) -> None:
    """Every check that needs no work: where results go, the device, and the experiment's own
    (:func:`experiment.validate`). Bad input fails here, before a lock, a server or a task."""
    check_results_root(config.results_root)
    resolve_device(config.device)
    experiment.validate(config=config)


def prepare(experiment: Experiment, *, config: ExperimentConfig, progress: Progress = no_progress) -> dict[str, Any]:
    """The experiment's shared work (reused when on disk); its caller validated the config.

    The context's ``shared`` names the files every job reads (:func:`shared_files`)."""
    with _threads(config):
        context = experiment.prepare(config=config, progress=progress)
    for note in replaced_config_note(experiment_store(experiment, config=config), config):
        log.warning("%s", note)  # now, before any job: in the flow's log too (PREFECT_LOGGING_EXTRA_LOGGERS)
    return {**context, "shared": shared_files(config, context)}


def replaced_config_note(store: ExperimentStore, config: ExperimentConfig) -> list[str]:
    """A note where rows of ``store`` come from another config than ``config`` (each row
    names its own): the run replaces them as its jobs run, since a store holds one
    config's rows. Said before any job runs, with the way to keep both."""
    rows = store.rows()
    other = [r for r in rows if (attrs := store.metadata(r)) is not None
             and attrs.get("config_digest") not in (None, config.digest())]
    if not other:
        return []
    return [f"{store.path} holds {len(other)} of its {len(rows)} rows from another config than this run's "
            f"({config.digest()}): this run replaces them as its jobs run. To keep both, stop it now (Ctrl-C: the "
            "rows it has not reached stay as they are) and pass --set name=NEW"]


def shared_files(config: ExperimentConfig, context: dict[str, Any]) -> dict[str, str]:
    """What every job reads, by what it is, as it was found once the shared work was done:
    the data folders the config names that exist, and the checkpoint(s) the context names.
    The results root is checked by each job itself (:func:`run_job`)."""
    shared = {}
    for field, what in (("data_root", "the data"), ("image_root", "the images"), ("cache_root", "the cache")):
        path = getattr(config, field, None)
        if isinstance(path, str) and path and os.path.exists(path):
            shared[what] = path
    checkpoint = context.get("checkpoint")
    named = checkpoint.values() if isinstance(checkpoint, dict) else [checkpoint]
    for k, path in enumerate(p for p in named if isinstance(p, str) and p):
        shared["the checkpoint" if k == 0 else f"the checkpoint #{k + 1}"] = path
    return shared


def plan(experiment: Experiment, context: dict[str, Any], *, config: ExperimentConfig) -> list[Job]:
    """The experiment's jobs, rows 0..n-1 each once. Nothing in the store is touched yet."""
    with _threads(config):
        jobs = experiment.plan(context, config=config)
    rows = sorted(r for j in jobs for r in j.rows)
    if rows != list(range(len(rows))):
        raise InternalError(f"{config.name}: the plan's rows are not 0..{len(rows) - 1} each once")
    # Before any row changes: a store cut short from here on knows how many rows it lacks.
    experiment_store(experiment, config=config).write_run_record(kind=experiment.NAME, rows=len(rows), config=config)
    return jobs


def experiment_store(experiment: Experiment | None, *, config: ExperimentConfig) -> ExperimentStore:
    """The store of a run of ``experiment`` with ``config``, with the outputs the experiment
    declares in ``OUTPUTS`` (suffixes of its name, the files its ``summarize`` writes):
    what a killed run leaves is derived from them, never from a list kept by hand. Without
    an experiment, the store takes them from its last run record."""
    return ExperimentStore.of(config, getattr(experiment, "OUTPUTS", ()))


def solve_key(job: Job, row: int, context: dict[str, Any], config: ExperimentConfig) -> str:
    return stage_key("solve", {"config": config.digest(), "row": row, "job": dict(job.spec),
                               "inputs": context.get("inputs", {})})


def evaluate_key(solve: str) -> str:
    return stage_key("evaluate", {"solve": solve})


def finished_jobs(experiment: Experiment, jobs: list[Job], context: dict[str, Any], *,
                  config: ExperimentConfig) -> list[int]:
    """The indices of ``jobs`` whose every row already holds both stage keys this run gives
    it, and whose files match its manifest: :func:`run_job` would compute and write nothing
    for them, only read their metrics back. The flow runs them in its own process instead of
    starting Dask workers for them (a rerun of a finished experiment then starts no cluster);
    a damaged row's job goes to the workers, to be redone there."""
    store = experiment_store(experiment, config=config)

    def done(job: Job, row: int) -> bool:
        keys, solve = row_keys(store, row), solve_key(job, row, context, config)
        return (keys.get("solve") == solve and keys.get("evaluate") == evaluate_key(solve)
                and store.row_damage(row) is None)

    return [k for k, job in enumerate(jobs) if all(done(job, r) for r in job.rows)]


def read_back(experiment: Experiment, job: Job, *, config: ExperimentConfig) -> list[dict[str, Any]]:
    """What :func:`run_job` returns for a job :func:`finished_jobs` found finished (each row's
    metrics, nothing solved, evaluated or repaired), without checking its files again."""
    store = experiment_store(experiment, config=config)
    return [{**store.read_attrs(r)["metrics"], "solved": False, "evaluated": False, "repaired": None}
            for r in job.rows]


def trusted_models(context: dict[str, Any]) -> tuple[str, ...]:
    """The user's own model this run was started with (its config's, resolved by ``prepare``
    in this run, never read back from the store): the one external model its evaluation
    may build. A row naming any other is refused."""
    source = context.get("model_source")
    if isinstance(source, dict) and source.get("kind") == "external" and isinstance(source.get("model"), str):
        return (source["model"],)
    return ()


def run_job(
    experiment: Experiment, job: Job, context: dict[str, Any], *, config: ExperimentConfig,
    progress: Progress = no_progress,
) -> list[dict[str, Any]]:
    """Solve and evaluate one job's rows, skipping each stage whose key is already on the row.

    The rows of a job are solved together or not at all. Returns each row's table
    record with ``solved`` and ``evaluated``: whether this call did that stage, and
    ``repaired``: why the row's stored files were found damaged (and redone), else None.
    """
    store, rows = experiment_store(experiment, config=config), list(job.rows)
    # Before anything is written: a worker on another filesystem would otherwise fill a results
    # root of its own (the plan wrote its run record there, so it exists wherever it is shared).
    require_visible({**context.get("shared", {}), "the results root": str(store.root)})
    solve = {r: solve_key(job, r, context, config) for r in rows}
    evaluate = {r: evaluate_key(solve[r]) for r in rows}
    out = []
    with _threads(config):
        damaged = drop_damaged(store, rows)
        solved = not all(is_done(store, r, "solve", solve[r]) for r in rows)
        if solved:
            experiment.solve(job, context, config=config, progress=progress)
            for r in rows:
                mark_done(store, r, "solve", solve[r])
        for r in rows:
            evaluated = not is_done(store, r, "evaluate", evaluate[r])
            if evaluated:
                evaluate_row(store, r, sample=config.sample, device=resolve_device(config.device),
                             trusted=trusted_models(context))
                mark_done(store, r, "evaluate", evaluate[r])
            attrs = store.read_attrs(r)
            out.append({**attrs["metrics"], "solved": solved, "evaluated": evaluated, "repaired": damaged.get(r)})
    return out


def outputs(experiment: Experiment, *, config: ExperimentConfig, n_rows: int) -> dict[str, Any]:
    """Once every job succeeded: the rows numbered ``n_rows`` and above (left by an earlier
    config with more targets) are removed, then
    the table and figure are rebuilt from the store (kept when unchanged), and any summary,
    whose files the ledger then records (``collide status`` reports one missing or changed).

    Pruning waits for the jobs: a config that fails in a job (a target with fewer
    non-positive units than ``n_vertices``, say) leaves an earlier run's rows as they were.
    """
    store = experiment_store(experiment, config=config)
    prune_rows(store, n_rows)
    written = write_outputs(store)
    if hasattr(experiment, "summarize"):
        store.remove_damaged_declared()  # else an edited figure beside unchanged values would be kept
        written = {**written, **experiment.summarize(config=config)}
        store.record_declared()
    return written


@contextlib.contextmanager
def lock(config: ExperimentConfig, experiment: Experiment | None = None) -> Iterator[None]:
    """One run of the experiment ``config`` names at a time (:func:`collide._io.experiment_lock`);
    once it holds the lock, what a killed run of it left (scratch rows, temporaries of the
    outputs ``experiment`` declares, or without it those its run record declared) goes."""
    store = experiment_store(experiment, config=config)
    with store.lock():
        store.remove_leftovers()
        if store.path.is_dir():  # damaged root metadata is rewritten
            store.ensure()
        try:
            yield
        finally:
            store.tidy_scratch()  # each write cleared its own scratch: an empty .tmp is all that is left


def run(experiment: Experiment, *, config: ExperimentConfig, progress: Progress = no_progress) -> dict[str, Any]:
    """Every stage in plain Python, jobs one after another: what the flow does over Dask."""
    start = time.perf_counter()
    config = config.absolute()  # what the flow hands its jobs: both runs share their keys
    validate(experiment, config=config)
    with lock(config, experiment):
        context = prepare(experiment, config=config, progress=progress)
        jobs = plan(experiment, context, config=config)
        rows = []
        progress("jobs", 0, len(jobs))  # the bar starts with the first job, not after it
        for k, j in enumerate(jobs):
            rows += run_job(experiment, j, context, config=config, progress=progress)
            progress("jobs", k + 1, len(jobs))
        written = outputs(experiment, config=config, n_rows=len(rows))
    return {**written, **{k: v for k, v in context.items() if k in REPORTED}, "rows": rows,
            "reused_rows": sum(reused(r) for r in rows),
            "seconds": time.perf_counter() - start}


# Context entries a run reports back (the CLI prints them).
REPORTED = ("test_accuracy", "random_weights", "notes", "origin", "reused", "checkpoint", "sha256", "dataset")
