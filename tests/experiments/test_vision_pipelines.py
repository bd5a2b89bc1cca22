"""The ImageNet and patch-composition experiments end to end, on small offline data."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from collide.config import GradientConfig, KnnConfig, PatchConfig, SampleConfig, TrainConfig
from collide.datasets.folders import bundled_corpus
from collide.errors import CheckpointError, ConfigError, DataError, LayerError
from collide.experiments import engine, imagenet
from collide.experiments import patches as patch_experiment
from collide.experiments.imagenet import ImagenetExperiment
from collide.experiments.patches import PatchExperiment
from collide.models.zoo import load_model_source
from collide.patches.compose import Composition, compose, pixel_weights, window_patches
from collide.polytope import combine
from collide.results.evaluation import evaluate_row
from collide.results.store import TABLE_COLUMNS, ExperimentStore
from tests.tolerances import RECOMPOSED

pytestmark = pytest.mark.slow
RECALL_MIN = 0.95


def _stored_predictions_reproduce(results_root, experiment):
    """Re-evaluate the stored samples through the stored model: same predictions.

    A row with fewer than two valid vertices has no samples; elsewhere only valid
    vertices carry weight.
    """
    for row in ExperimentStore(results_root, experiment).rows():
        arrays, attrs = ExperimentStore(results_root, experiment).read_row(row)
        valid = arrays["vertex_valid"]
        if "sample_weights" not in arrays:
            assert valid.sum() < 2, (experiment, row)
            continue
        assert not arrays["sample_weights"][:, ~valid].any(), "an invalid vertex carries sample weight"
        model = load_model_source(attrs["model_source"])
        weights = torch.from_numpy(arrays["sample_weights"][:, valid]).double()
        samples = combine(weights, torch.from_numpy(arrays["vertices"][valid]))
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
    out = engine.run(imagenet, config=imagenet_config)
    frame = pd.read_parquet(out["table"])
    assert list(frame.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert len(frame) == 2 and frame["random_weights"].all() and (frame["model"] == "vgg16-random").all()
    assert (frame["pixel_scale"] == 1).all()  # [0, 1] input units, as every experiment
    _, attrs = ExperimentStore(imagenet_config.results_root, "imagenet").read_row(1)
    assert attrs["init"] == "other" and attrs["init_path"] != attrs["target_path"]
    assert Path(out["figure"]).is_file()
    _stored_predictions_reproduce(imagenet_config.results_root, "imagenet")
    for row in (0, 1):
        arrays, _ = ExperimentStore(imagenet_config.results_root, "imagenet").read_row(row)
        _assert_validity_is_counted(arrays, frame.iloc[row])
    # Row 0 starts at the target with min_steps=0: a solver that stops at once leaves
    # every vertex on the target. Whatever the solver did, such vertices are no
    # polytope: pinned to the target, the row must say so, not "success 1.0".
    root = imagenet_config.results_root
    arrays, _ = ExperimentStore(root, "imagenet").read_row(0)
    pinned = np.broadcast_to(arrays["target"], arrays["vertices"].shape).copy()
    ExperimentStore(root, "imagenet").write_row(0, {"vertices": pinned}, {}, keep_existing=True)
    record = evaluate_row(ExperimentStore(root, "imagenet"), 0, sample=imagenet_config.sample)
    arrays, _ = ExperimentStore(root, "imagenet").read_row(0)
    assert not arrays["vertex_valid"].any() and record["invalid_reason"]
    _assert_validity_is_counted(arrays, record)


def _assert_validity_is_counted(arrays, record):
    """A vertex equal to the target is never valid, and the table counts what is."""
    valid = arrays["vertex_valid"]
    assert valid.shape == (len(arrays["vertices"]),) and valid.dtype == bool
    at_target = (arrays["vertices"] == arrays["target"]).reshape(len(valid), -1).all(1)
    assert not (valid & at_target).any(), "a vertex identical to the target counts as valid"
    assert record["valid_vertices"] == valid.sum()
    assert pd.isna(record["success_rate"]) == (valid.sum() < 2)


def test_imagenet_bad_inputs_write_nothing(imagenet_config, tmp_path):
    cases = [
        (dict(weights=str(tmp_path / "none.pth")), CheckpointError, "does not exist"),
        (dict(image_root=str(tmp_path / "nowhere")), DataError, "does not exist"),
        (dict(layer="fc9"), LayerError, "fc6"),
        (dict(target="no/such.png"), DataError, "not an image"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            engine.run(imagenet, config=dataclasses.replace(imagenet_config, **change))
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
        knn=KnnConfig(k=5, epsilon=0.5, method="pynndescent"),
        gradient=dataclasses.replace(PatchExperiment().gradient, max_steps=150),
        sample=SampleConfig(n_samples=200, n_dataset_pairs=100),
    )
    return config, engine.run(patch_experiment, config=config)


def test_patch_run_writes_table6_with_recall(patch_run):
    config, out = patch_run
    frame = pd.read_parquet(out["table"])
    assert list(frame.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert frame["row"].tolist() == [0, 1] and (frame["method"] == "patches").all()
    assert (frame["knn_recall"] >= RECALL_MIN).all() and (frame["knn_k"] == 5).all()
    assert (frame["n_patches"] == 100 * 36).all()  # 10% of 1000 training images, 6x6 windows each
    assert Path(out["figure"]).is_file()
    _stored_predictions_reproduce(config.results_root, config.name)
    for row in (0, 1):
        arrays, attrs = ExperimentStore.of(config).read_row(row)
        _assert_validity_is_counted(arrays, frame.iloc[row])
        # The paper's candidates: the start's windows were the only queries.
        assert attrs["knn_queries"] == 36 and attrs["target_weight_share"] == 0.0
        assert attrs["composition"]["candidates_from"] == "start"


def _recompose(config, arrays):
    """The row's compositions rebuilt from its stored candidates, independently of the solver."""
    store = zarr.open_group(patch_experiment._store_path(config), mode="r")["patches"][...]
    rows = arrays["candidate_rows"]
    own = window_patches(torch.from_numpy(arrays["start"]), config.patch.size, config.patch.stride)
    candidates = own[:, None].repeat(1, rows.shape[1], 1, 1, 1)
    stored = torch.from_numpy(rows != patch_experiment.OWN_PATCH)
    candidates[stored] = torch.from_numpy(store[rows[rows != patch_experiment.OWN_PATCH]].astype(np.float32) / 255)
    comp = Composition(candidates, tuple(arrays["start"].shape), config.patch.stride)
    return compose(torch.from_numpy(arrays["logits"]), comp), comp, store


def _assert_stored_compositions(config, row):
    arrays, attrs = ExperimentStore.of(config).read_row(row)
    v = config.n_vertices
    assert arrays["logits"].shape[:1] == (v,) and arrays["candidate_rows"].shape == arrays["logits"].shape[1:]
    assert (arrays["candidate_rows"][:, 0] == patch_experiment.OWN_PATCH).all()
    assert (arrays["candidate_rows"][:, 1:] >= 0).all()
    images, comp, store = _recompose(config, arrays)
    for k in range(v):
        assert torch.allclose(images[k], torch.from_numpy(arrays["vertices"][k]), rtol=0, atol=RECOMPOSED), k
    vertices = torch.from_numpy(arrays["vertices"]).double()
    for name, point in (("distance_to_start", "start"), ("distance_to_target", "target")):
        expected = (vertices - torch.from_numpy(arrays[point]).double()).flatten(1).norm(dim=1).numpy()
        assert np.allclose(arrays[name], expected, rtol=1e-9, atol=0), name
    assert attrs["mean_distance_to_start_all"] == pytest.approx(arrays["distance_to_start"].mean(), rel=1e-9)
    assert attrs["mean_distance_to_target_all"] == pytest.approx(arrays["distance_to_target"].mean(), rel=1e-9)
    from_target = torch.from_numpy(arrays["candidate_from_target"])
    per_pixel = pixel_weights(torch.from_numpy(arrays["logits"]), comp)[:, :, from_target].sum((1, 2))
    assert attrs["target_weight_share"] == pytest.approx(float(per_pixel.mean()), abs=RECOMPOSED)
    return arrays, attrs, store


def test_patch_vertices_are_compositions_of_their_candidates(patch_run):
    config, _ = patch_run
    for row in (0, 1):
        arrays, attrs, _ = _assert_stored_compositions(config, row)
        assert attrs["composition"]["candidates"] == 1 + config.knn.k  # own patch + k neighbours
        assert not arrays["candidate_from_target"].any()
        assert arrays["vertices"].min() >= 0 and arrays["vertices"].max() <= 1


def test_patch_variant_adds_target_neighbours_but_never_the_target(patch_run, tmp_path):
    config, _ = patch_run
    variant = dataclasses.replace(config, candidates_from="start+target-neighbours", rows=("other",),
                                  results_root=str(tmp_path / "res"))
    engine.run(patch_experiment, config=variant)
    arrays, attrs, store = _assert_stored_compositions(variant, 0)
    k = config.knn.k
    assert attrs["composition"]["candidates"] == 1 + 2 * k
    assert attrs["composition"]["candidates_from"] == "start+target-neighbours"
    assert arrays["candidate_from_target"].tolist() == [False] * (1 + k) + [True] * k
    assert attrs["knn_queries"] == 2 * 36 and attrs["knn_recall"] >= RECALL_MIN
    target = torch.from_numpy(arrays["target"])
    theirs = window_patches(target, config.patch.size, config.patch.stride)
    banned = {p.tobytes() for p in (theirs * 255).round().to(torch.uint8).numpy()}
    used = arrays["candidate_rows"][:, arrays["candidate_from_target"]]
    assert not any(store[r].tobytes() in banned for r in np.unique(used)), "a copy of the target's own patch"
    # Each window's target-derived candidates are distinct patches, nearest first.
    for g, row in enumerate(used):
        assert len({store[r].tobytes() for r in row}) == k
        d = np.linalg.norm(store[row].reshape(k, -1) / 255 - theirs[g].flatten().numpy(), axis=1)
        assert np.all(np.diff(d) >= -1e-6)
    assert 0 < attrs["target_weight_share"] <= 1


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
        engine.run(patch_experiment, config=big_k)
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
    out = engine.run(patch_experiment, config=config)
    frame = pd.read_parquet(out["table"])
    assert out["random_weights"] and (frame["model"] == "vgg16-random").all()
    assert (frame["pixel_scale"] == 1).all() and (frame["knn_recall"] >= RECALL_MIN).all()
    arrays, attrs = ExperimentStore.of(config).read_row(1)
    assert arrays["vertices"].shape == (5, 3, 32, 32)
    assert attrs["composition"]["candidates_from"] == "start" and attrs["knn_queries"] == 16
    _stored_predictions_reproduce(config.results_root, config.name)
