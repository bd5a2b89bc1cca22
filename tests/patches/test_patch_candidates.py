"""The patch experiment's candidate sets: the target's neighbours never include the target."""

import numpy as np
import pytest
import torch

from collide.config import KnnConfig, PatchConfig
from collide.errors import ConfigError
from collide.experiments import patches as patch_experiment
from collide.experiments.patches import PatchExperiment
from collide.patches.compose import window_patches
from collide.patches.knn import PatchIndex, as_vectors


def _setting(k=4):
    """A store of smooth random patches holding copies of two of the target's windows."""
    rng = np.random.default_rng(0)
    coarse = rng.random((800, 1, 2, 2))
    corpus = (coarse.repeat(2, 2).repeat(2, 3) * 255).astype(np.uint8)  # (n, 1, 4, 4)
    target = torch.from_numpy(rng.random((1, 8, 8)).astype(np.float32))
    target = (target * 255).round() / 255  # on the store's grid: copies are byte-identical
    windows = (window_patches(target, 4, 4) * 255).round().to(torch.uint8).numpy()  # (4, 1, 4, 4)
    corpus[[10, 400, 401]] = windows[[0, 2, 2]]  # copies, two of them straddling both halves
    config = PatchExperiment(patch=PatchConfig(size=4, stride=4), knn=KnnConfig(k=k, shards=2, method="pynndescent"))
    return corpus, target, windows, config


def test_target_neighbours_leave_out_the_target_and_its_copies():
    corpus, target, windows, config = _setting()
    index = PatchIndex.build(corpus, config=config.knn)
    banned = frozenset(w.tobytes() for w in windows)
    near = patch_experiment._neighbours(target, index, corpus, config, exclude=banned)
    k = config.knn.k
    assert near.rows.shape == (4, k) and near.found.shape == near.exact.shape == (4, k)
    assert not any(corpus[r].tobytes() in banned for r in near.rows.ravel())
    # Brute force over the distinct store patches that are not the target's: the same answers.
    flat = corpus.reshape(len(corpus), -1)
    _, first = np.unique(flat, axis=0, return_index=True)
    allowed = np.array([r for r in np.sort(first) if corpus[r].tobytes() not in banned])
    queries = window_patches(target, 4, 4).flatten(1).numpy()
    d = np.linalg.norm(as_vectors(corpus[allowed])[None] - queries[:, None], axis=2)
    assert np.allclose(near.exact, np.sort(d, 1)[:, :k], atol=1e-5)
    assert np.allclose(near.found, near.exact, atol=1e-5)
    # Without the exclusion the copies are the nearest answers, at distance 0.
    plain = patch_experiment._neighbours(target, index, corpus, config)
    assert plain.found[0, 0] == 0 and plain.found[2, 0] == 0


def test_the_old_trivially_reachable_candidate_set_is_gone():
    assert PatchExperiment().candidates_from == "start"
    with pytest.raises(ConfigError, match="start\\+target-neighbours"):
        PatchExperiment(candidates_from="start+target")
