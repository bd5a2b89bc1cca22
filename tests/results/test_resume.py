"""Resumable, idempotent jobs: stage keys decide what a rerun redoes, and nothing else moves."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from collide._io import code_version
from collide.config import DEFAULT_ROWS
from collide.datasets.mnist import load_mnist
from collide.errors import ConfigError
from collide.experiments import engine, mnist
from collide.experiments.mnist import MnistExperiment
from collide.models.zoo import load_checkpoint
from collide.results.resume import mark_done, row_keys, stage_key
from collide.results.store import ExperimentStore
from tests.support import small_mnist_config, snapshot

TIMING = ["solver_seconds", "region_seconds"]


@pytest.fixture(scope="module")
def finished(tiny_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    config = small_mnist_config(tiny_mnist, root, rows=DEFAULT_ROWS[:4])  # gradient and exact
    out = engine.run(mnist, config=config)
    return config, out


def _copy(config: MnistExperiment, tmp_path: Path) -> MnistExperiment:
    """The finished experiment in a results root of its own, to damage freely."""
    shutil.copytree(config.results_root, tmp_path / "res")
    return dataclasses.replace(config, results_root=str(tmp_path / "res"))


def test_every_row_carries_its_stage_keys(finished):
    config, out = finished
    assert [r["row"] for r in out["rows"]] == [0, 1, 2, 3]
    assert all(r["solved"] and r["evaluated"] for r in out["rows"])
    for row in range(4):
        assert set(row_keys(ExperimentStore.of(config), row)) == {"solve", "evaluate"}


def test_rerun_of_a_finished_experiment_reuses_everything_and_changes_nothing(finished):
    config, _ = finished
    before = snapshot(config.results_root)
    again = engine.run(mnist, config=config)
    assert not any(r["solved"] or r["evaluated"] for r in again["rows"])
    assert again["reused"]
    assert snapshot(config.results_root) == before


def test_a_row_cut_off_before_its_key_is_redone_alone(finished, tmp_path):
    config = _copy(finished[0], tmp_path)
    before = pd.read_parquet(Path(config.results_root) / "mnist.parquet")
    mark_done(ExperimentStore.of(config), 3, "evaluate", "killed-before-the-key")
    out = engine.run(mnist, config=config)
    assert [(r["solved"], r["evaluated"]) for r in out["rows"]] == [(False, False)] * 3 + [(False, True)]
    after = pd.read_parquet(out["table"])
    pd.testing.assert_frame_equal(before, after)  # solver_seconds too: the solve was reused


def test_a_row_whose_solve_key_is_lost_is_redone_alone_and_identically(finished, tmp_path):
    config = _copy(finished[0], tmp_path)
    old = ExperimentStore.of(config).read_row(1)[0]
    ExperimentStore.of(config).write_row(1, {}, {"keys": {}}, keep_existing=True)
    out = engine.run(mnist, config=config)
    assert [r["solved"] for r in out["rows"]] == [False, True, False, False]
    new, _ = ExperimentStore.of(config).read_row(1)
    for key in ("vertices", "sample_weights", "sample_pred", "sample_prob"):
        assert np.array_equal(new[key], old[key]), key


def test_finished_jobs_are_those_whose_every_row_holds_both_keys_of_this_run(finished, tmp_path):
    """What the flow reads back without starting workers: a job is finished only where each
    of its rows holds this run's solve and evaluate keys; a stale or missing key on any row,
    or another config, leaves it to run."""
    config = _copy(finished[0], tmp_path)
    context = engine.prepare(mnist, config=config)
    jobs = engine.plan(mnist, context, config=config)
    assert sorted(r for j in jobs for r in j.rows) == [0, 1, 2, 3]
    assert engine.finished_jobs(mnist, jobs, context, config=config) == list(range(len(jobs)))
    # read back, a finished job gives what running it gives
    assert [engine.read_back(mnist, j, config=config) for j in jobs] == [
        engine.run_job(mnist, j, context, config=config) for j in jobs]
    owner = {r: k for k, j in enumerate(jobs) for r in j.rows}
    mark_done(ExperimentStore.of(config), 3, "evaluate", "killed-before-the-key")
    ExperimentStore.of(config).write_row(1, {}, {"keys": {}}, keep_existing=True)
    assert engine.finished_jobs(mnist, jobs, context, config=config) == [
        k for k in range(len(jobs)) if k not in (owner[1], owner[3])]
    other = dataclasses.replace(config, sample=dataclasses.replace(config.sample, n_samples=7))
    assert engine.finished_jobs(mnist, jobs, context, config=other) == []
    # keys intact, an array's bytes changed: the job goes to the workers, to be redone there
    row = ExperimentStore.of(config).row_path(2)
    chunk = max((p for p in row.rglob("*") if p.is_file() and p.name != "zarr.json"), key=lambda p: p.stat().st_size)
    chunk.write_bytes(chunk.read_bytes()[:-1] + bytes([chunk.read_bytes()[-1] ^ 1]))
    assert set(engine.finished_jobs(mnist, jobs, context, config=config)) == {
        k for k in range(len(jobs)) if k not in (owner[1], owner[2], owner[3])}


def test_rows_left_by_a_bigger_config_are_pruned(finished, tmp_path):
    config = _copy(finished[0], tmp_path)
    arrays, attrs = ExperimentStore.of(config).read_row(0)
    ExperimentStore.of(config).write_row(9, arrays, attrs)
    out = engine.run(mnist, config=config)
    assert ExperimentStore.of(config).rows() == [0, 1, 2, 3]
    assert pd.read_parquet(out["table"])["row"].tolist() == [0, 1, 2, 3]


def test_many_targets_are_the_first_correct_images_of_each_class(finished):
    config = dataclasses.replace(finished[0], targets_per_class=2)
    context = engine.prepare(mnist, config=config)
    targets = context["targets"]
    model, _ = load_checkpoint(context["checkpoint"])
    test = load_mnist(config.data_root, "test")
    with torch.no_grad():
        pred = model(test.images).argmax(1)
    assert len(targets) == 20
    for k, t in enumerate(targets):
        label = k // 2
        assert int(test.labels[t["target_index"]]) == label == int(pred[t["target_index"]])
        assert int(test.labels[t["other_index"]]) != label
        earlier = torch.nonzero((test.labels[: t["target_index"]] == label) & (pred[: t["target_index"]] == label))
        assert len(earlier) == k % 2  # the first, then the second correct one
    planned = dataclasses.replace(config, results_root=str(Path(config.results_root) / "plan"))
    jobs = engine.plan(mnist, context, config=planned)
    assert [j.rows for j in jobs] == [(r,) for r in range(80)]  # one job per row
    assert jobs[5].spec["batch"] == [targets[1]]  # rows 4..7 belong to the second target
    assert config.n_rows == 80 and config.row_spec(6) == config.rows[2]


def test_too_few_correct_targets_is_refused_before_writing(finished, tmp_path):
    config = dataclasses.replace(finished[0], targets_per_class=10_000, results_root=str(tmp_path / "r"))
    with pytest.raises(Exception, match="lower targets_per_class"):
        engine.prepare(mnist, config=config)
    assert not ExperimentStore.of(config).path.exists()


def test_config_checks_the_new_fields():
    with pytest.raises(ConfigError, match="expected targets_per_class >= 0, got -1"):
        MnistExperiment(targets_per_class=-1)
    with pytest.raises(ConfigError, match="expected threads >= 1, got 0"):
        MnistExperiment(threads=0)
    with pytest.raises(ConfigError, match="expected row in 0..5"):
        MnistExperiment().row_spec(6)
    assert MnistExperiment(threads=2).digest() != MnistExperiment().digest()


def test_stage_keys_follow_their_inputs():
    assert len(code_version()) == 16
    a = stage_key("solve", {"row": 0, "config": "x"})
    assert a == stage_key("solve", {"config": "x", "row": 0})
    assert a != stage_key("solve", {"row": 1, "config": "x"}) != stage_key("evaluate", {"row": 0, "config": "x"})


def test_a_config_that_fails_on_its_data_leaves_an_earlier_runs_rows_alone(finished, tmp_path, monkeypatch):
    """A config refused by its data (more vertices than the layer's units; a target with
    fewer non-positive units than vertices) fails before any row, record or output of the
    earlier, larger run changes; and pruning waits for every job anyway."""
    config = _copy(finished[0], tmp_path)
    before = snapshot(config.results_root)
    fewer = dataclasses.replace(config, rows=DEFAULT_ROWS[:2], n_vertices=1000)
    with pytest.raises(ConfigError, match="more than the 256 units of layer 'relu1'"):
        engine.run(mnist, config=fewer)
    assert snapshot(config.results_root) == before
    # A width the layer has, but more than the target's non-positive units (it has some
    # positive ones): found in prepare, from the data, not in a job.
    fewer = dataclasses.replace(config, rows=DEFAULT_ROWS[:2], n_vertices=255)
    with pytest.raises(ConfigError, match="non-positive units at relu1, fewer than the 255 vertices"):
        engine.run(mnist, config=fewer)
    assert snapshot(config.results_root) == before
    assert ExperimentStore.of(config).rows() == [0, 1, 2, 3]


def test_a_layer_alias_shares_its_digest_and_reuses_every_row(finished, tmp_path):
    """``fc1`` is the MLP's ``relu1`` (`collide config show mnist` lists both): the same
    experiment, so the same digest, and a rerun under the alias recomputes nothing."""
    config = _copy(finished[0], tmp_path)
    assert config.layer == "relu1"
    alias = dataclasses.replace(config, layer="fc1")
    assert alias.digest() == config.digest()
    assert dataclasses.replace(config, layer="relu2").digest() != config.digest()
    again = engine.run(mnist, config=alias)
    assert not any(r["solved"] or r["evaluated"] for r in again["rows"])
