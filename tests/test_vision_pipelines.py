"""The ImageNet and patch-composition experiments end to end, on small offline data."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from collide import imagenet, patch_experiment
from collide.config import (
    GradientConfig,
    ImagenetExperiment,
    KnnConfig,
    PatchConfig,
    PatchExperiment,
    SampleConfig,
    TrainConfig,
)
from collide.errors import CheckpointError, ConfigError, DataError, LayerError
from collide.images import bundled_corpus
from collide.models import load_model_source
from collide.polytope import combine
from collide.store import TABLE_COLUMNS, list_rows, read_row

pytestmark = pytest.mark.slow
RECALL_MIN = 0.95


def _stored_predictions_reproduce(results_root, experiment):
    """Re-evaluate the stored samples through the stored model: same predictions."""
    for row in list_rows(results_root, experiment):
        arrays, attrs = read_row(results_root, experiment, row)
        model = load_model_source(attrs["model_source"])
        samples = combine(torch.from_numpy(arrays["sample_weights"]).double(), torch.from_numpy(arrays["vertices"]))
        with torch.no_grad():
            pred = torch.cat([model(samples[i : i + 100]).argmax(1) for i in range(0, len(samples), 100)])
        assert np.array_equal(pred.numpy(), arrays["sample_pred"]), (experiment, row)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return bundled_corpus(tmp_path_factory.mktemp("photos"), size=40)


@pytest.fixture
def imagenet_config(photos, tmp_path):
    return ImagenetExperiment(
        image_root=str(photos), image_size=32, weights="random", device="cpu", results_root=str(tmp_path / "res"),
        rows=("target", "other"), gradient=GradientConfig(max_steps=20, min_steps=0),
        sample=SampleConfig(n_samples=100, n_dataset_pairs=50), n_dataset_images=10,
    )


def test_imagenet_run_marks_random_weights_and_reproduces(imagenet_config):
    out = imagenet.run(config=imagenet_config)
    frame = pd.read_parquet(out["table"])
    assert list(frame.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert len(frame) == 2 and frame["random_weights"].all() and (frame["model"] == "vgg16-random").all()
    assert (frame["pixel_scale"] == 255).all() and (frame["dataset_avg_distance"] > 255).all()
    _, attrs = read_row(imagenet_config.results_root, "imagenet", 1)
    assert attrs["init"] == "other" and attrs["init_path"] != attrs["target_path"]
    assert Path(out["figure"]).is_file()
    _stored_predictions_reproduce(imagenet_config.results_root, "imagenet")


def test_imagenet_bad_inputs_write_nothing(imagenet_config, tmp_path):
    cases = [
        (dict(weights=str(tmp_path / "none.pth")), CheckpointError, "does not exist"),
        (dict(image_root=str(tmp_path / "nowhere")), DataError, "does not exist"),
        (dict(layer="fc9"), LayerError, "fc6"),
        (dict(target="no/such.png"), DataError, "not an image"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            imagenet.run(config=dataclasses.replace(imagenet_config, **change))
        assert not Path(imagenet_config.results_root).exists()
    with pytest.raises(ConfigError, match="image_size"):
        dataclasses.replace(imagenet_config, image_size=16)


@pytest.fixture(scope="module")
def patch_run(tiny_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    config = PatchExperiment(
        data_root=str(tiny_mnist), checkpoint_dir=str(root / "ck"), cache_root=str(root / "cache"),
        results_root=str(root / "res"), device="cpu", allow_download=False,
        train=TrainConfig(arch="lenet5", epochs=2, min_accuracy=0.0),
        patch=PatchConfig(size=8, stride=4, share=0.1, images_per_chunk=30),
        knn=KnnConfig(k=5, epsilon=0.5), gradient=dataclasses.replace(PatchExperiment().gradient, max_steps=150),
        sample=SampleConfig(n_samples=200, n_dataset_pairs=100),
    )
    return config, patch_experiment.run(config=config)


def test_patch_run_writes_table6_with_recall(patch_run):
    config, out = patch_run
    frame = pd.read_parquet(out["table"])
    assert list(frame.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert frame["row"].tolist() == [0, 1] and (frame["method"] == "patches").all()
    assert (frame["knn_recall"] >= RECALL_MIN).all() and (frame["knn_k"] == 5).all()
    assert (frame["n_patches"] == 100 * 36).all()  # 10% of 1000 training images, 6x6 windows each
    assert Path(out["figure"]).is_file()
    _stored_predictions_reproduce(config.results_root, config.name)


def test_patch_vertices_are_compositions_of_their_candidates(patch_run):
    config, _ = patch_run
    arrays, attrs = read_row(config.results_root, config.name, 0)
    assert arrays["logits"].shape[:1] == (config.n_vertices,)
    assert arrays["vertices"].min() >= 0 and arrays["vertices"].max() <= 1
    assert attrs["composition"]["candidates"] == 1 + config.knn.k  # own patch + k neighbours


def test_patch_rerun_reuses_store_and_index(patch_run):
    config, _ = patch_run
    assert patch_experiment.build_patches(config=config)["chunks_written"] == 0
    assert patch_experiment.build_index(config=config)["reused"]


def test_patch_bad_inputs(patch_run, tmp_path):
    config, _ = patch_run
    with pytest.raises(ConfigError, match="larger than the image"):
        patch_experiment.validate(config=dataclasses.replace(config, patch=PatchConfig(size=40)))
    with pytest.raises(ConfigError, match="larger than the store"):
        big_k = dataclasses.replace(config, knn=KnnConfig(k=10**6), results_root=str(tmp_path / "r"))
        patch_experiment.build_index(config=big_k)
        patch_experiment.solve_rows(
            patch_experiment.train_model(config=big_k)["model_source"], {"start": 0, "other": 1}, config=big_k
        )
    assert not (tmp_path / "r").exists()


def test_patches_on_an_rgb_folder_with_vgg(photos, tmp_path):
    """The paper's setting in miniature: bundled photos, VGG-16 (random) at 32x32."""
    config = PatchExperiment(
        dataset="folder", image_root=str(photos), image_size=32, weights="random", layer="fc6",
        cache_root=str(tmp_path / "cache"), results_root=str(tmp_path / "res"), device="cpu",
        patch=PatchConfig(size=8, stride=8, share=0.5), knn=KnnConfig(k=3),
        gradient=dataclasses.replace(PatchExperiment().gradient, max_steps=10, min_steps=0),
        sample=SampleConfig(n_samples=50, n_dataset_pairs=20), n_dataset_images=8,
    )
    out = patch_experiment.run(config=config)
    frame = pd.read_parquet(out["table"])
    assert out["random_weights"] and (frame["model"] == "vgg16-random").all()
    assert (frame["pixel_scale"] == 255).all() and (frame["knn_recall"] >= RECALL_MIN).all()
    arrays, attrs = read_row(config.results_root, config.name, 1)
    assert arrays["vertices"].shape == (5, 3, 32, 32)
    assert attrs["composition"]["candidates_from"] == "start+target"
    _stored_predictions_reproduce(config.results_root, config.name)
