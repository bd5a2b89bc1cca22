import numba
import numpy as np
import pytest
import torch

from collide.config import KnnConfig
from collide.errors import ConfigError, DataError
from collide.patches.knn import PatchIndex, as_vectors, exact_knn, recall_at_k
from tests.support import PROJECT, SHARED_WORKER

RECALL_MIN = 0.95
DISTANCE_ATOL = 1e-3  # float32 distances of 16-pixel patches in 0-255 units


def _corpus(n=3000, d=(1, 4, 4), seed=0):
    """Patches of smooth random images: low intrinsic dimension, like real patches."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, d[0], 2, 2))
    smooth = coarse.repeat(d[1] // 2, 2).repeat(d[2] // 2, 3) + 0.1 * rng.random((n, *d))
    return (smooth / smooth.max() * 255).astype(np.uint8)


def test_exact_knn_equals_brute_force_in_numpy():
    corpus = _corpus(500)
    q = as_vectors(corpus[:7]) + 0.01
    idx, dist = exact_knn(q, corpus, 5, chunk=64)  # many chunks: the merge is exercised
    full = np.linalg.norm(as_vectors(corpus)[None] - q[:, None], axis=2)
    assert np.allclose(dist, np.sort(full, 1)[:, :5], atol=1e-4)
    assert np.allclose(np.take_along_axis(full, idx, 1), dist, atol=1e-4)


def test_recall_counts_ties_and_misses():
    exact = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 2.0]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[0.0, 1.0, 3.0], [0.0, 2.0, 2.0]]), exact) == pytest.approx(5 / 6)


@pytest.mark.parametrize("config", [
    KnnConfig(method="pynndescent", k=10),
    KnnConfig(method="pynndescent", k=10, shards=3),
    KnnConfig(method="pynndescent", k=10, n_components=8),
])
def test_index_recall_against_the_oracle(config, tmp_path):
    corpus = _corpus()
    q = as_vectors(_corpus(200, seed=1))
    index = PatchIndex.build(corpus, config=config)
    approx, dist = index.query(q, 10, corpus=corpus)
    _, exact = exact_knn(q, corpus, 10, rows=index.items)
    assert recall_at_k(dist, exact) >= RECALL_MIN
    assert np.all(np.diff(dist, axis=1) >= 0)
    reloaded = PatchIndex.load(index.save(tmp_path / "i.npz"))
    assert np.array_equal(reloaded.query(q, 10, corpus=corpus)[0], approx)


def test_bad_queries_are_refused():
    corpus = _corpus(50)
    with pytest.raises(ConfigError, match="larger than the store"):
        exact_knn(as_vectors(corpus[:2]), corpus, 51)
    with pytest.raises(DataError, match="NaN"):
        exact_knn(np.full((1, 16), np.nan, np.float32), corpus, 3)
    with pytest.raises(DataError, match="nothing to index"):
        PatchIndex.build(corpus[:1], config=KnnConfig())
    with pytest.raises(DataError, match="build it first"):
        PatchIndex.load("/nonexistent/i.npz")


def test_duplicates_are_indexed_once_and_do_not_trap_the_search():
    # Like MNIST: a large share of identical blank patches beside real ones.
    corpus = _corpus(3000)
    corpus[::2] = 0
    index = PatchIndex.build(corpus, config=KnnConfig(method="pynndescent", k=10))
    assert len(index.items) == len(np.unique(corpus.reshape(len(corpus), -1), axis=0))
    q = as_vectors(_corpus(100, seed=2)) * 0.05  # faint queries: the blank patch is near
    idx, dist = index.query(q, 10)
    assert all(len(set(row.tolist())) == 10 for row in idx)
    assert all(len({corpus[i].tobytes() for i in row}) == 10 for row in idx), "answers are distinct patches"
    _, exact = exact_knn(q, corpus, 10, rows=index.items)
    assert recall_at_k(dist, exact) >= RECALL_MIN


@pytest.mark.parametrize("config", [
    KnnConfig(method="pynndescent", k=10, shards=4),
    KnnConfig(method="pynndescent", k=10, shards=4, n_components=8),
])
def test_shards_answer_k_distinct_patches_when_duplicates_straddle_them(config):
    base = _corpus(400)
    # Every patch three times, scattered: the copies of a patch fall into different shards.
    corpus = np.concatenate([base, base, base])[np.random.default_rng(5).permutation(1200)]
    flat = corpus.reshape(len(corpus), -1)
    distinct, first = np.unique(flat, axis=0, return_index=True)
    q = np.concatenate([as_vectors(base[:50]), as_vectors(_corpus(50, seed=4))])  # near copies and fresh
    index = PatchIndex.build(corpus, config=config)
    assert np.array_equal(index.items, np.sort(first))
    idx, dist = index.query(q, 10, corpus=corpus)
    for row in idx:
        assert len({corpus[i].tobytes() for i in row}) == 10, "answers are distinct patches"
        assert all(not (flat[:i] == flat[i]).all(1).any() for i in row), "each named by its first row"
    answers = as_vectors(corpus[idx.ravel()]).reshape(*idx.shape, -1)
    assert np.allclose(np.linalg.norm(answers - q[:, None], axis=2), dist, atol=1e-5)
    brute = np.sort(np.linalg.norm(as_vectors(distinct)[None] - q[:, None], axis=2), 1)[:, :10]
    assert recall_at_k(dist, brute) >= RECALL_MIN
    assert np.allclose(exact_knn(q, corpus, 10, rows=index.items)[1], brute, atol=1e-5)


def test_an_index_from_an_older_format_is_refused(tmp_path):
    from collide.patches.knn import StaleIndexError

    index = PatchIndex.build(_corpus(200), config=KnnConfig(method="pynndescent", k=3))
    index.format = 1
    index.save(tmp_path / "old.npz")
    with pytest.raises(StaleIndexError, match="older collide"):
        PatchIndex.load(tmp_path / "old.npz")


class _Planted:
    """A pickle that touches a file when loaded: what a planted cache file could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("as_npz", [False, True])
def test_a_planted_pickle_is_refused_and_never_run(tmp_path, as_npz):
    import pickle

    from collide.patches.index_file import UnsafeIndexError

    marker = tmp_path / "ran"
    path = tmp_path / "planted.npz"
    if as_npz:  # an object array inside a real .npz: np.load would unpickle it if allowed
        np.savez(path, __meta__=np.array([_Planted(marker)], dtype=object))
    else:
        path.write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(UnsafeIndexError, match="not a collide kNN index"):
        PatchIndex.load(path)
    assert not marker.exists()


def test_an_index_whose_graph_points_outside_its_data_is_refused(tmp_path):
    from collide.patches.index_file import UnsafeIndexError, read_index_file, write_index_file

    index = PatchIndex.build(_corpus(300), config=KnnConfig(method="pynndescent", k=3))
    meta, arrays = read_index_file(index.save(tmp_path / "i.npz"))
    arrays = {k: arrays[k] for k in arrays.files if k != "__meta__"}
    arrays["s0._search_graph.indices"] = arrays["s0._search_graph.indices"] + 10**6
    write_index_file(tmp_path / "bad.npz", meta, arrays)
    with pytest.raises(UnsafeIndexError, match="out of range"):
        PatchIndex.load(tmp_path / "bad.npz")


def test_an_exact_index_round_trips(tmp_path):
    corpus = _corpus(400)
    q = as_vectors(_corpus(20, seed=4))
    index = PatchIndex.build(corpus, config=KnnConfig(method="exact", k=5))
    again = PatchIndex.load(index.save(tmp_path / "e.npz"))
    for a, b in zip(index.query(q, 5), again.query(q, 5), strict=True):
        assert np.array_equal(a, b)


def test_query_blocks_do_not_change_the_answer():
    corpus = _corpus(300)
    q = as_vectors(_corpus(50, seed=3))
    whole = exact_knn(q, corpus, 4)
    blocked = exact_knn(q, corpus, 4, query_block=7)
    assert np.array_equal(whole[0], blocked[0]) and np.array_equal(whole[1], blocked[1])


@pytest.mark.parametrize("config", [KnnConfig(k=10), KnnConfig(k=10, shards=3), KnnConfig(method="exact", k=10)])
def test_a_small_store_is_searched_exactly(config):
    """``auto`` below ``exact_below`` patches: the answers are the brute-force oracle's."""
    corpus = _corpus()
    assert config.method == "exact" or len(corpus) < config.exact_below
    q = as_vectors(_corpus(100, seed=2))
    index = PatchIndex.build(corpus, config=config)
    idx, dist = index.query(q, 10, corpus=corpus)
    _, exact = exact_knn(q, corpus, 10, rows=index.items)
    assert recall_at_k(dist, exact) == 1.0
    assert np.allclose(dist, exact, atol=DISTANCE_ATOL)
    full = np.linalg.norm(as_vectors(corpus)[idx] - q[:, None], axis=2)
    assert np.allclose(full, dist, atol=DISTANCE_ATOL)  # each answer's distance is its own


@pytest.mark.parametrize("config", [
    KnnConfig(method="pynndescent", k=10, shards=3),
    KnnConfig(method="pynndescent", k=10, shards=3, n_components=8),
    KnnConfig(method="exact", k=10, shards=2),
])
def test_a_saved_index_queried_shard_by_shard_equals_the_loaded_one(config, tmp_path, monkeypatch):
    import weakref

    from collide.patches import knn

    corpus = _corpus()
    q = as_vectors(_corpus(200, seed=1))
    path = PatchIndex.build(corpus, config=config).save(tmp_path / "i.npz")
    loaded = PatchIndex.load(path)
    saved = knn.SavedIndex(path)
    assert np.array_equal(saved.items, loaded.items)
    alive = []
    read_shard = knn._read_shard

    def read_one(*args):
        # The shard read before this one must be gone: one shard in memory at a time.
        assert all(ref() is None for ref in alive), "an earlier shard is still held"
        shard = read_shard(*args)
        alive.append(weakref.ref(shard.index))
        return shard

    monkeypatch.setattr(knn, "_read_shard", read_one)
    got = saved.query(q, 10, corpus=corpus)
    assert len(alive) == config.shards
    want = loaded.query(q, 10, corpus=corpus)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    _, exact = exact_knn(q, corpus, 10, rows=loaded.items)
    assert recall_at_k(got[1], exact) >= RECALL_MIN


def test_nndescent_options_reach_pynndescent_and_keep_recall():
    corpus = _corpus()
    q = as_vectors(_corpus(200, seed=1))
    config = KnnConfig(method="pynndescent", k=10, n_neighbors=12, n_trees=3, n_iters=4, max_candidates=8,
                       low_memory=False, n_jobs=2)
    index = PatchIndex.build(corpus, config=config)
    nn = index.shards[0].index
    assert (nn.n_neighbors, nn.n_trees, nn.n_iters, nn.max_candidates, nn.low_memory, nn.n_jobs) == (
        12, 3, 4, 8, False, min(2, numba.config.NUMBA_NUM_THREADS))
    _, dist = index.query(q, 10)
    _, exact = exact_knn(q, corpus, 10, rows=index.items)
    assert recall_at_k(dist, exact) >= RECALL_MIN


def test_pynndescent_gets_at_most_the_threads_numba_holds(monkeypatch):
    # On one core numba's pool holds one thread, and it refused the default n_jobs=2 (its
    # check reads the pool's size as numba loaded: here the cap alone is tested).
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    index = PatchIndex.build(_corpus(500), config=KnnConfig(method="pynndescent", n_jobs=2))
    assert index.shards[0].index.n_jobs == 1


def test_building_an_index_leaves_torchs_thread_count_alone(monkeypatch):
    # numba's first launch of its OpenMP threads in a process sets their count where torch
    # reads its own (torch's 1 became numba's 2 on this 2-core machine). This process
    # launched them already, so each of pynndescent's calls to numba.set_num_threads (in
    # the build) stands in for that launch here.
    real = numba.set_num_threads

    def launching(n):
        real(n)
        torch.set_num_threads(n + 5)

    monkeypatch.setattr(numba, "set_num_threads", launching)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        PatchIndex.build(_corpus(500), config=KnnConfig(method="pynndescent", n_jobs=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)


def test_the_default_index_is_deterministic():
    corpus = _corpus()
    q = as_vectors(_corpus(100, seed=1))
    config = KnnConfig(method="pynndescent", k=10)
    a, b = (PatchIndex.build(corpus, config=config).query(q, 10) for _ in range(2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_bad_nndescent_options_are_refused():
    with pytest.raises(ConfigError, match="n_jobs >= 1"):
        KnnConfig(n_jobs=0)
    with pytest.raises(ConfigError, match="n_trees >= 0"):
        KnnConfig(n_trees=-1)


def test_the_files_that_build_pynndescent_indexes_share_a_test_worker():
    # One that does not compiles numba's kernels again in a worker of its own.
    building = {path.relative_to(PROJECT).as_posix() for path in (PROJECT / "tests").rglob("test_*.py")
                if 'method="pynndescent"' in path.read_text()}
    assert building and building == set(SHARED_WORKER)
