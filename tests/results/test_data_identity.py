"""Data identity: a run is labelled by its data, checkpoints are keyed by the data's digest,
and the paper's MNIST values appear beside MNIST runs only."""

import dataclasses

import pandas as pd
import pytest

from collide.config import RowSpec
from collide.datasets.mnist import MNIST_DIGEST, data_digest, data_label
from collide.errors import CheckpointError, DataError
from collide.experiments import mnist
from collide.experiments.engine import run
from collide.results.reference import reference_for
from collide.results.store import ExperimentStore
from collide.results.vertex_figure import row_label
from tests.support import small_mnist_config, synthetic_mnist

GRADIENT_ROWS = (RowSpec("gradient", "target"), RowSpec("gradient", "other"))


def test_the_digest_is_the_data_not_the_files(tmp_path):
    raw = synthetic_mnist(tmp_path / "raw", n_train=50, n_test=20)
    gz = tmp_path / "gz"
    gz.mkdir()
    import gzip

    for f in raw.iterdir():
        (gz / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    other = synthetic_mnist(tmp_path / "other", n_train=50, n_test=20, seed=1)
    assert data_digest(raw) == data_digest(gz) != data_digest(other)
    assert data_digest(raw) != MNIST_DIGEST


def test_labels_name_the_data_and_never_call_other_data_mnist(tmp_path):
    digits = synthetic_mnist(tmp_path / "digits", n_train=50, n_test=20)
    digest = data_digest(digits)
    assert data_label(digits, digest) == "digits"
    assert data_label(digits, digest, "my-scan") == "my-scan"
    assert data_label(tmp_path / "mnist", digest).startswith("idx-")  # a folder called mnist is not MNIST
    assert data_label(tmp_path / "anything", MNIST_DIGEST) == "MNIST"
    with pytest.raises(DataError, match="not MNIST's"):
        data_label(digits, digest, "MNIST")


def test_checkpoints_of_other_data_are_never_reused(tmp_path):
    """Two datasets, one checkpoint folder: each trains its own model; a rerun reuses its own."""
    a = small_mnist_config(synthetic_mnist(tmp_path / "a"), tmp_path, checkpoint="train")
    b = dataclasses.replace(a, data_root=str(synthetic_mnist(tmp_path / "b", seed=1)))
    first, second, again = (mnist.train_model(config=c) for c in (a, b, a))
    assert (first["origin"], second["origin"], again["origin"]) == ("trained",) * 3
    assert (first["reused"], second["reused"], again["reused"]) == (False, False, True)
    assert first["checkpoint"] != second["checkpoint"] and first["sha256"] != second["sha256"]
    assert again["sha256"] == first["sha256"] and first["data_digest"] == data_digest(a.data_root)
    # No shipped checkpoint was trained on these data: asking for one says how to train.
    with pytest.raises(CheckpointError, match="checkpoint=train"):
        mnist.train_model(config=dataclasses.replace(a, checkpoint="shipped"))
    # `auto` finds no shipped one either, so it takes what this machine trained.
    assert mnist.train_model(config=dataclasses.replace(a, checkpoint="auto"))["reused"] is True


def test_a_run_on_other_data_is_labelled_so_and_shows_no_paper_values(tmp_path):
    config = small_mnist_config(synthetic_mnist(tmp_path / "digits"), tmp_path, rows=GRADIENT_ROWS)
    run(mnist, config=config)
    table = pd.read_parquet(ExperimentStore.of(config).table_path)
    assert set(table["dataset"]) == {"digits"} and set(table["model"]) == {"digits-mlp"}
    assert set(table["checkpoint_origin"]) == {"trained"}
    assert set(table["data_digest"]) == {data_digest(config.data_root)}
    for record in table.to_dict("records"):
        assert reference_for(record) is None
        assert "paper" not in row_label(int(record["row"]), {"metrics": record, **record})
    # The same row under MNIST's name would be compared with the paper's Table 2.
    mnist_like = {**table.to_dict("records")[0], "model": "mnist-mlp", "dataset": "MNIST"}
    assert reference_for(mnist_like) is not None
