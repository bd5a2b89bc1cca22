import numpy as np
import pytest
import zarr

from collide.config import PatchConfig
from collide.errors import ConfigError, DataError
from collide.patches import extract as patches
from collide.patches.extract import build_store, extract, open_store, sample_ids


def _images(n=10, c=1, h=12, w=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def test_extract_index_points_at_the_patch():
    imgs = _images(3, c=3)
    p, idx = extract(imgs, 4, 3, ids=[10, 11, 12])
    assert p.shape == (3 * 9, 3, 4, 4) and idx.shape == (27, 3)
    for k in (0, 5, 13, 26):
        image, r, c = idx[k]
        assert np.array_equal(p[k], imgs[image - 10, :, r : r + 4, c : c + 4])
    assert sorted(set(idx[:, 1].tolist())) == [0, 3, 6]


def test_patch_larger_than_image_is_refused():
    with pytest.raises(ConfigError, match="larger than the image"):
        extract(_images(1), 13, 1)


def test_dask_store_equals_numpy_path(tmp_path):
    imgs = _images(10)
    ids = [0, 2, 3, 5, 6, 9, 1]
    config = PatchConfig(size=4, stride=4, images_per_chunk=3)
    out = build_store(tmp_path / "p.zarr", ids, lambda i: imgs[list(i)], image_shape=(1, 12, 12), config=config)
    assert out["chunks_written"] == 3
    group = open_store(tmp_path / "p.zarr")
    ref_p, ref_i = extract(imgs[ids], 4, 4, ids)
    assert np.array_equal(group["patches"][...], ref_p)
    assert np.array_equal(group["index"][...], ref_i)
    assert group["patches"].chunks[0] == 3 * 9  # chunked by images_per_chunk, however tasks group them


def _recording_loader(imgs):
    """A loader of ``imgs`` that records the ids of every call."""
    calls = []

    def load(ids):
        calls.append(list(ids))
        return imgs[list(ids)]

    return load, calls


def test_rerun_skips_finished_chunks_and_redoes_unfinished(tmp_path, monkeypatch):
    monkeypatch.setattr(patches, "TASK_BYTES", 1)  # one chunk per task, one load per chunk
    imgs = _images(10)
    config = PatchConfig(size=4, stride=4, images_per_chunk=4)
    load, calls = _recording_loader(imgs)

    build_store(tmp_path / "p.zarr", range(10), load, image_shape=(1, 12, 12), config=config)
    assert len(calls) == 3
    # As if a run died after writing chunk 1 but before marking it done.
    group = zarr.open_group(tmp_path / "p.zarr", mode="r+")
    group["done"][1] = False
    group["patches"][9 * 4 : 9 * 8] = 0  # 9 patches per 12x12 image
    (tmp_path / "p.zarr.manifest.json").unlink()  # written only once every chunk is done
    calls.clear()
    again = build_store(tmp_path / "p.zarr", range(10), load, image_shape=(1, 12, 12), config=config)
    assert calls == [[4, 5, 6, 7]]
    assert again["chunks_reused"] == 2 and again["chunks_written"] == 1
    ref, _ = extract(imgs, 4, 4)
    assert np.array_equal(open_store(tmp_path / "p.zarr")["patches"][...], ref)


def test_a_deleted_chunk_of_a_finished_store_is_damage_and_the_next_build_redoes_it(tmp_path):
    imgs = _images(10)
    config = PatchConfig(size=4, stride=4, images_per_chunk=4)
    build_store(tmp_path / "p.zarr", range(10), lambda i: imgs[list(i)], image_shape=(1, 12, 12), config=config)
    chunk = sorted(p for p in (tmp_path / "p.zarr" / "patches").rglob("*") if p.is_file() and "/c/" in p.as_posix())[1]
    chunk.unlink()
    with pytest.raises(DataError, match=r"patch store .* is damaged: patches/c/\S+ is missing"):
        open_store(tmp_path / "p.zarr")
    out = build_store(tmp_path / "p.zarr", range(10), lambda i: imgs[list(i)], image_shape=(1, 12, 12),
                      config=config)
    assert out["chunks_written"] == 3
    assert np.array_equal(open_store(tmp_path / "p.zarr")["patches"][...], extract(imgs, 4, 4)[0])


def test_changed_settings_rebuild_the_store(tmp_path):
    imgs = _images(4)
    build_store(tmp_path / "p.zarr", range(4), lambda i: imgs[list(i)], image_shape=(1, 12, 12),
                config=PatchConfig(size=4, stride=4))
    out = build_store(tmp_path / "p.zarr", range(4), lambda i: imgs[list(i)], image_shape=(1, 12, 12),
                      config=PatchConfig(size=6, stride=6))
    assert out["chunks_written"] == 1
    assert open_store(tmp_path / "p.zarr")["patches"].shape[2:] == (6, 6)


def test_incomplete_or_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="build it first"):
        open_store(tmp_path / "none.zarr")
    imgs = _images(4)
    build_store(tmp_path / "p.zarr", range(4), lambda i: imgs[list(i)], image_shape=(1, 12, 12),
                config=PatchConfig(size=4, stride=4, images_per_chunk=2))
    zarr.open_group(tmp_path / "p.zarr", mode="r+")["done"][0] = False
    with pytest.raises(DataError, match="incomplete"):
        open_store(tmp_path / "p.zarr")


def test_sample_ids_takes_a_share_of_every_class():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3)
    ids = sample_ids(labels, 0.1, seed=0)
    assert [int((labels[ids] == c).sum()) for c in (0, 1, 2)] == [5, 3, 1]
    assert np.array_equal(ids, sample_ids(labels, 0.1, seed=0))
    with pytest.raises(DataError, match="empty"):
        sample_ids(np.array([], dtype=int), 0.1, seed=0)


def test_window_starts_cover_the_side():
    assert patches.window_starts(28, 8, 4).tolist() == [0, 4, 8, 12, 16, 20]


def test_store_attrs_stay_small_as_the_corpus_grows(tmp_path):
    imgs = _images(3)
    ids = list(range(3)) * 400  # 1200 images: their ids go to an array, not the attrs
    build_store(tmp_path / "p.zarr", ids, lambda i: imgs[[k % 3 for k in i]], image_shape=(1, 12, 12),
                config=PatchConfig(size=4, stride=4, images_per_chunk=600))
    assert (tmp_path / "p.zarr" / "zarr.json").stat().st_size < 4096
    assert open_store(tmp_path / "p.zarr")["image_ids"][...].tolist() == ids


def test_runs_group_consecutive_unfinished_chunks():
    assert patches._runs([0, 1, 2, 4, 5, 7], 2) == [(0, 2), (2, 3), (4, 6), (7, 8)]
    assert patches._runs([], 3) == []
    assert patches._runs([3], 1) == [(3, 4)]


@pytest.mark.parametrize("task_bytes", [1, 2 * 9 * 16, 10**9])  # one chunk per task, two, all
def test_tasks_of_several_chunks_write_the_numpy_store(tmp_path, monkeypatch, task_bytes):
    monkeypatch.setattr(patches, "TASK_BYTES", task_bytes)
    imgs = _images(10)
    config = PatchConfig(size=4, stride=4, images_per_chunk=2)  # 2 images * 9 patches * 16 bytes a chunk
    seen = []
    out = build_store(tmp_path / "p.zarr", range(10), lambda i: imgs[list(i)], image_shape=(1, 12, 12),
                      config=config, progress=lambda what, done, total: seen.append((done, total)))
    assert out["chunks_written"] == 5
    group = open_store(tmp_path / "p.zarr")
    ref_p, ref_i = extract(imgs, 4, 4)
    assert np.array_equal(group["patches"][...], ref_p) and np.array_equal(group["index"][...], ref_i)
    assert group["patches"].chunks[0] == 2 * 9  # the store's chunking is the config's, whatever the tasks
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_rerun_redoes_a_run_of_unfinished_chunks_in_one_task(tmp_path, monkeypatch):
    monkeypatch.setattr(patches, "TASK_BYTES", 10**9)
    imgs = _images(10)
    config = PatchConfig(size=4, stride=4, images_per_chunk=2)
    load, calls = _recording_loader(imgs)

    build_store(tmp_path / "p.zarr", range(10), load, image_shape=(1, 12, 12), config=config)
    assert calls == [list(range(10))]
    group = zarr.open_group(tmp_path / "p.zarr", mode="r+")
    group["done"][1:3] = False  # chunks 1 and 2: images 2..5
    group["done"][4] = False  # chunk 4: images 8, 9
    group["patches"][18:54] = 0
    (tmp_path / "p.zarr.manifest.json").unlink()
    calls.clear()
    build_store(tmp_path / "p.zarr", range(10), load, image_shape=(1, 12, 12), config=config)
    assert sorted(calls) == [[2, 3, 4, 5], [8, 9]]
    assert np.array_equal(open_store(tmp_path / "p.zarr")["patches"][...], extract(imgs, 4, 4)[0])


def test_a_blank_chunk_is_written_and_listed_in_the_manifest(tmp_path):
    """An all-zero chunk equals Zarr's fill value: it is still written, so that the
    manifest can tell it from a lost one."""
    imgs = np.zeros((4, 1, 12, 12), dtype=np.uint8)
    build_store(tmp_path / "p.zarr", range(4), lambda i: imgs[list(i)], image_shape=(1, 12, 12),
                config=PatchConfig(size=4, stride=4, images_per_chunk=2))
    chunks = [p for p in (tmp_path / "p.zarr" / "patches").rglob("*") if p.is_file() and "/c/" in p.as_posix()]
    assert len(chunks) == 2
    chunks[0].unlink()
    with pytest.raises(DataError, match="damaged"):
        open_store(tmp_path / "p.zarr")
