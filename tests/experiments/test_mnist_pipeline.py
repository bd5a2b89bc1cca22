"""The MNIST experiment end to end in plain Python, on synthetic IDX files."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from collide.config import TrainConfig
from collide.errors import CheckpointError, ConfigError, DataError, LayerError
from collide.experiments import engine, mnist
from collide.models.zoo import load_checkpoint
from collide.results.evaluation import evaluate_row
from collide.results.store import TABLE_COLUMNS, ExperimentStore
from tests.support import copy_run
from tests.tolerances import LP_STORED_REL_ERROR_F64, RECHECK


@pytest.fixture(scope="module")
def finished(mnist_run, tmp_path_factory):
    """The session's finished run, copied: tests here write stores of their own beside it."""
    config, out = mnist_run
    return copy_run(config, tmp_path_factory.mktemp("run") / "results"), out


def test_a_finished_run_leaves_no_scratch_folder(mnist_run):
    """A new user's trial: an empty data/results/.tmp stayed after every run."""
    config, _ = mnist_run
    assert not (Path(config.results_root) / ".tmp").exists()
    assert (Path(config.results_root) / f"{config.name}.zarr").is_dir()


def test_table_has_every_row_and_the_contract_columns(finished):
    config, out = finished
    frame = pd.read_parquet(out["table"])
    assert list(frame.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert frame["row"].tolist() == list(range(6))
    assert list(zip(frame["method"], frame["init"], strict=True)) == [
        ("gradient", "target"), ("gradient", "other"), ("exact", "target"), ("exact", "other"),
        ("paper", "target"), ("paper", "other")]
    for rec in frame.itertuples():
        if rec.valid_vertices >= 2:
            assert rec.invalid_reason == "" and rec.n_samples == 300
        else:  # no polytope: no success rate, and the table says why
            assert np.isnan(rec.success_rate) and "vertices valid" in rec.invalid_reason
    gradient_and_exact = frame[frame["method"] != "paper"]
    assert (gradient_and_exact["valid_vertices"] == config.n_vertices).all()
    assert (gradient_and_exact["success_rate"] == 1.0).all()
    assert frame.loc[frame["method"] == "gradient", "converged"].tolist() == [True, True]
    assert Path(out["figure"]).stat().st_size > 10_000


def test_exact_rows_say_which_points_they_hold_and_every_spread_its_pairs(finished):
    """Issue "Sizes you can trust" §7: an exact row names its proximity (0: extreme points; the
    default 0.5: pulled toward the init), and every row the vertex pairs its spread rests on."""
    config, out = finished
    frame = pd.read_parquet(out["table"])
    exact = frame["method"] == "exact"
    assert (frame.loc[exact, "exact_proximity"] == config.exact.proximity).all() and exact.sum() == 2
    assert frame.loc[~exact, "exact_proximity"].isna().all()
    n = frame["valid_vertices"]
    assert (frame["vertex_pairs"] == n * (n - 1) // 2).all()


def test_dimension_bound_matches_an_independent_rank(finished):
    # At relu1 the Jacobian rows of the positive units are fc1's weight rows: their rank,
    # from the checkpoint with numpy, must be what the exact rows report.
    config, out = finished
    frame = pd.read_parquet(out["table"])
    arrays, attrs = ExperimentStore.of(config).read_row(2)
    model, _ = load_checkpoint(attrs["checkpoint"])
    w = model.fc1.weight.detach().double().numpy()
    b = model.fc1.bias.detach().double().numpy()
    positive = w @ arrays["target"].astype(np.float64).ravel() + b > 0
    rank = np.linalg.matrix_rank(w[positive])
    for row in (2, 3):
        rec = frame[frame["row"] == row].iloc[0]
        assert rec["n_positive"] == positive.sum()
        assert rec["rank_positive"] == rank
        assert rec["dim_upper_bound"] == 784 - rank


def _mlp_pre_float64(model, x: np.ndarray) -> np.ndarray:
    """relu1's pre-activation by hand, in float64: the oracle of the recheck."""
    w = model.fc1.weight.detach().double().numpy()
    b = model.fc1.bias.detach().double().numpy()
    return x.reshape(len(x), -1).astype(np.float64) @ w.T + b


def test_every_weighted_vertex_collides_when_recomputed_in_float64(finished):
    """The sceptic's recheck: every vertex that carries sample weight, pushed through the
    stored checkpoint by hand in float64, collides to its method's tolerance; the row's
    largest error and success rate equal the recomputation."""
    config, _ = finished
    frame = pd.read_parquet(Path(config.results_root) / f"{config.name}.parquet")
    for row, spec in enumerate(config.rows):
        arrays, attrs = ExperimentStore.of(config).read_row(row)
        model, meta = load_checkpoint(attrs["checkpoint"])
        assert meta["sha256"] == attrs["checkpoint_sha256"]
        rec = frame[frame["row"] == row].iloc[0]
        weighted = (arrays.get("sample_weights", np.zeros((1, 5))) > 0).any(0)
        assert (weighted <= arrays["vertex_valid"]).all(), "an invalid vertex carries sample weight"
        if not weighted.any():
            assert np.isnan(rec["success_rate"])
            continue
        t_pre = _mlp_pre_float64(model, arrays["target"][None])
        v_pre = _mlp_pre_float64(model, arrays["vertices"][weighted])
        t_post = np.maximum(t_pre, 0)
        rel = np.linalg.norm(np.maximum(v_pre, 0) - t_post, axis=1) / np.linalg.norm(t_post)
        tol = {"gradient": config.gradient.rel_tol, "exact": LP_STORED_REL_ERROR_F64,
               "paper": config.paper.rel_tol}[spec.method]
        for k, err in enumerate(rel):
            assert err <= tol, (row, k, err)
        assert rec["max_feature_rel_error"] == pytest.approx(rel.max(), rel=RECHECK)
        samples = arrays["sample_weights"].astype(np.float64) @ arrays["vertices"].reshape(5, -1).astype(np.float64)
        with torch.no_grad():
            pred = model(torch.from_numpy(samples.astype(np.float32)).view(-1, 1, 28, 28)).argmax(1).numpy()
            t_class = int(model(torch.from_numpy(arrays["target"])[None]).argmax())
        assert rec["success_rate"] == pytest.approx((pred == t_class).mean(), abs=1 / len(pred))
        assert np.allclose(arrays["sample_weights"].sum(1), 1, atol=1e-6)


def test_gradient_vertices_move_their_unit_below_the_target(finished):
    # A vertex is the best feasible point, not the first: from the target itself, each
    # pushed unit must end well below the target's own value.
    config, _ = finished
    for row in (0, 1):
        arrays, attrs = ExperimentStore.of(config).read_row(row)
        margin = attrs["push_margin_value"]
        assert margin > 0
        assert (arrays["pushed_value"] <= arrays["target_pushed_value"] - margin).all()
        assert (arrays["distance_to_target"] > 0.1).all()


def _tampered_copy(config, name: str, replace: dict[int, np.ndarray]) -> None:
    arrays, attrs = ExperimentStore.of(config).read_row(0)
    vertices = arrays["vertices"].copy()
    for k, v in replace.items():
        vertices[k] = v
    attrs = {k: v for k, v in attrs.items() if k not in ("metrics", "keys")}
    ExperimentStore(config.results_root, name).write_row(0, {"vertices": vertices, "target": arrays["target"],
                                             "init": arrays["init"]}, attrs)


def test_vertices_that_do_not_collide_carry_no_sample_weight(finished):
    config, _ = finished
    arrays, _ = ExperimentStore.of(config).read_row(0)
    noise = np.random.default_rng(0).random(arrays["target"].shape, dtype=np.float32)
    _tampered_copy(config, "tampered", {1: noise, 2: arrays["target"]})
    metrics = evaluate_row(ExperimentStore(config.results_root, "tampered"), 0, sample=config.sample)
    stored, attrs = ExperimentStore(config.results_root, "tampered").read_row(0)
    assert stored["vertex_valid"].tolist() == [True, False, False, True, True]
    assert (stored["sample_weights"][:, 1:3] == 0).all()
    assert metrics["valid_vertices"] == 3 and metrics["n_vertices"] == 5
    assert metrics["vertex_pairs"] == 3  # 3 choose 2: the spread rests on the valid vertices' pairs only
    good = torch.from_numpy(arrays["vertices"][[0, 3, 4]]).flatten(1).double()
    assert abs(metrics["vertex_avg_distance"] - float(torch.pdist(good).mean())) <= RECHECK * (
        1 + metrics["vertex_avg_distance"])
    assert "feature error" in attrs["vertex_reasons"][1]
    assert "pushed unit" in attrs["vertex_reasons"][2]  # the target itself is no vertex
    assert metrics["max_feature_rel_error"] <= config.gradient.rel_tol < metrics["max_feature_rel_error_all"]


def test_a_row_without_two_valid_vertices_has_no_success_rate(finished):
    config, _ = finished
    arrays, _ = ExperimentStore.of(config).read_row(0)
    _tampered_copy(config, "collapsed", {k: arrays["target"] for k in range(1, 5)})
    metrics = evaluate_row(ExperimentStore(config.results_root, "collapsed"), 0, sample=config.sample)
    stored, _ = ExperimentStore(config.results_root, "collapsed").read_row(0)
    assert np.isnan(metrics["success_rate"]) and np.isnan(metrics["vertex_avg_distance"])
    assert metrics["valid_vertices"] == 1 and "1 of 5 vertices valid" in metrics["invalid_reason"]
    assert metrics["vertex_pairs"] == 0
    assert "sample_weights" not in stored and "sample_pred" not in stored


def test_rerun_reuses_the_checkpoint_and_reproduces_the_table(finished):
    config, out = finished
    first = pd.read_parquet(out["table"])
    second = engine.run(mnist, config=config)
    again = pd.read_parquet(second["table"])
    timing = ["solver_seconds", "region_seconds"]
    pd.testing.assert_frame_equal(first.drop(columns=timing, errors="ignore"), again.drop(columns=timing,
                                                                                          errors="ignore"))
    assert mnist.train_model(config=config)["reused"]


def test_a_run_with_another_config_says_it_replaces_the_stores_rows_before_any_job(finished, caplog):
    config, _ = finished
    store = engine.experiment_store(mnist, config=config)
    assert engine.replaced_config_note(store, config) == []  # the rows' own config: nothing replaced
    other = dataclasses.replace(config, n_vertices=3).absolute()
    [note] = engine.replaced_config_note(store, other)
    assert f"holds 6 of its 6 rows from another config than this run's ({other.digest()})" in note
    assert "--set name=NEW" in note
    with caplog.at_level("WARNING", logger="collide.experiments.engine"):
        engine.prepare(mnist, config=other)
    assert [r.getMessage() for r in caplog.records] == [note]
    # The rows say which config they come from, not the run record: a run planned with the
    # other config and stopped before any job leaves the rows, and no note, for their own.
    store.write_run_record(kind="mnist", rows=6, config=other)
    assert engine.replaced_config_note(store, config) == []


def test_unknown_layer_fails_before_writing_anything(tiny_config):
    bad = dataclasses.replace(tiny_config, layer="fc3")
    with pytest.raises(LayerError, match="relu1"):
        engine.run(mnist, config=bad)
    assert not Path(bad.results_root).exists() and not Path(bad.checkpoint_dir).exists()


def test_missing_data_fails_before_writing_anything(tiny_config, tmp_path):
    bad = dataclasses.replace(tiny_config, data_root=str(tmp_path / "empty"))
    with pytest.raises(DataError, match="IDX"):
        engine.run(mnist, config=bad)
    assert not Path(bad.results_root).exists() and not Path(bad.checkpoint_dir).exists()


def test_too_weak_a_model_is_refused_and_not_saved(tiny_config):
    bad = dataclasses.replace(tiny_config, train=TrainConfig(epochs=1, train_limit=20, min_accuracy=0.99))
    with pytest.raises(CheckpointError, match="below the required"):
        engine.run(mnist, config=bad)
    assert not ExperimentStore.of(bad).path.exists()
    assert not any(Path(bad.checkpoint_dir).glob("*.pt")) if Path(bad.checkpoint_dir).exists() else True


def test_bad_config_values_name_the_field():
    from collide.experiments.mnist import MnistExperiment

    with pytest.raises(ConfigError, match="n_vertices"):
        MnistExperiment(n_vertices=0)
    with pytest.raises(ConfigError, match="layers"):
        MnistExperiment.from_dict({"layers": "relu1"})
    with pytest.raises(ConfigError, match=r"rows\[0\]\.method: expected one of"):
        MnistExperiment.from_dict({"rows": [{"method": "magic", "init": "target"}]})


def test_verify_agrees_with_an_honest_table_and_catches_a_doctored_one(finished, capsys):
    from collide.results.verify import verify
    from flows.cli import main

    config, _ = finished
    assert all(r["problems"] == [] for r in verify(ExperimentStore.of(config)))
    capsys.readouterr()
    assert main(["verify", config.name, "--results-root", config.results_root]) == 0
    # Each row's largest error beside its own method's bound: the paper's 0.5 is not the others'.
    lines = [line for line in capsys.readouterr().out.splitlines() if "recomputed in float64" in line]
    methods = pd.read_parquet(Path(config.results_root) / f"{config.name}.parquet")["method"].tolist()
    bounds = {"gradient": "(criterion <= 0.01)", "exact": "(criterion <= 1e-06)", "paper": "(criterion <= 0.5)"}
    assert len(lines) == len(methods) and all(bounds[m] in line for m, line in zip(methods, lines, strict=True))
    arrays, attrs = ExperimentStore.of(config).read_row(0)
    doctored = {**attrs["metrics"], "max_feature_rel_error": attrs["metrics"]["max_feature_rel_error"] / 2}
    ExperimentStore(config.results_root, "doctored").write_row(0, arrays, {**attrs, "metrics": doctored})
    (report,) = verify(ExperimentStore(config.results_root, "doctored"))
    assert any("max_feature_rel_error" in p for p in report["problems"])
    capsys.readouterr()
    assert main(["verify", "doctored", "--results-root", config.results_root]) == 1
    assert "MISMATCH" in capsys.readouterr().out
