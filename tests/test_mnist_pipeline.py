"""The MNIST experiment end to end in plain Python, on synthetic IDX files."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from collide import mnist
from collide.config import TrainConfig
from collide.errors import CheckpointError, ConfigError, DataError, LayerError
from collide.models import load_checkpoint
from collide.objective import feature_rel_error, max_nonpositive_violation
from collide.store import TABLE_COLUMNS, read_row, store_path
from collide.taps import preactivation
from tests.conftest import small_mnist_config
from tests.tolerances import LP_STORED_REL_ERROR


@pytest.fixture(scope="module")
def finished(tiny_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = small_mnist_config(tiny_mnist, root)
    out = mnist.run(config=config)
    return config, out


def test_table_has_the_four_rows_and_contract_columns(finished):
    config, out = finished
    frame = pd.read_parquet(out["table"])
    assert list(frame.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert frame["row"].tolist() == [0, 1, 2, 3]
    assert list(zip(frame["method"], frame["init"], strict=True)) == [
        ("gradient", "target"), ("gradient", "other"), ("exact", "target"), ("exact", "other")]
    assert (frame["success_rate"] == 1.0).all()
    assert (frame["n_samples"] == 300).all()
    assert (frame["dim_bound"][2:] == 784 - frame["rank_positive"][2:]).all()
    assert Path(out["figure"]).stat().st_size > 10_000


def test_stored_vertices_collide_through_the_stored_checkpoint(finished):
    config, _ = finished
    for row, spec in enumerate(config.rows):
        arrays, attrs = read_row(config.results_root, config.name, row)
        model, meta = load_checkpoint(attrs["checkpoint"])
        assert meta["sha256"] == attrs["checkpoint_sha256"]
        with torch.no_grad():
            t_pre = preactivation(model, torch.from_numpy(arrays["target"])[None], attrs["layer"])
            v_pre = preactivation(model, torch.from_numpy(arrays["vertices"]), attrs["layer"])
            pred = model(torch.from_numpy(arrays["vertices"])).argmax(1)
        rel = feature_rel_error(v_pre, t_pre)
        viol = max_nonpositive_violation(v_pre, t_pre)
        rel_tol = config.gradient.rel_tol if spec.method == "gradient" else LP_STORED_REL_ERROR
        for k in range(config.n_vertices):
            assert rel[k] <= rel_tol, (row, k, float(rel[k]))
            if spec.method == "gradient":
                assert viol[k] <= config.gradient.neg_tol
        assert (pred == attrs["target_class"]).all()
        assert arrays["sample_weights"].shape == (300, config.n_vertices)
        assert arrays["sample_pred"].shape == (300,) and arrays["sample_prob"].shape == (300,)
        assert np.allclose(arrays["sample_weights"].sum(1), 1, atol=1e-6)


def test_rerun_reuses_the_checkpoint_and_reproduces_the_table(finished):
    config, out = finished
    first = pd.read_parquet(out["table"])
    second = mnist.run(config=config)
    again = pd.read_parquet(second["table"])
    timing = ["solver_seconds"]
    pd.testing.assert_frame_equal(first.drop(columns=timing), again.drop(columns=timing))
    assert mnist.train_model(config=config)["reused"]


def test_unknown_layer_fails_before_writing_anything(tiny_config):
    bad = dataclasses.replace(tiny_config, layer="fc3")
    with pytest.raises(LayerError, match="relu1"):
        mnist.run(config=bad)
    assert not Path(bad.results_root).exists() and not Path(bad.checkpoint_dir).exists()


def test_missing_data_fails_before_writing_anything(tiny_config, tmp_path):
    bad = dataclasses.replace(tiny_config, data_root=str(tmp_path / "empty"))
    with pytest.raises(DataError, match="IDX"):
        mnist.run(config=bad)
    assert not Path(bad.results_root).exists() and not Path(bad.checkpoint_dir).exists()


def test_too_weak_a_model_is_refused_and_not_saved(tiny_config):
    bad = dataclasses.replace(tiny_config, train=TrainConfig(epochs=1, train_limit=20, min_accuracy=0.99))
    with pytest.raises(CheckpointError, match="below the required"):
        mnist.run(config=bad)
    assert not store_path(bad.results_root, bad.name).exists()
    assert not any(Path(bad.checkpoint_dir).glob("*.pt")) if Path(bad.checkpoint_dir).exists() else True


def test_bad_config_values_name_the_field():
    from collide.config import MnistExperiment

    with pytest.raises(ConfigError, match="n_vertices"):
        MnistExperiment(n_vertices=0)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        MnistExperiment.from_dict({"layers": "relu1"})
    with pytest.raises(ConfigError, match="expected method in"):
        MnistExperiment.from_dict({"rows": [{"method": "magic", "init": "target"}]})
