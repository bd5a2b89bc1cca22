import pytest
import torch

from collide.datasets.examples import load_factory_dataset
from collide.datasets.mnist import load_mnist
from collide.errors import ConfigError, DataError
from tests import user_datasets
from tests.support import synthetic_mnist

SHAPE = (1, 28, 28)


@pytest.fixture
def digits_root(tmp_path, monkeypatch):
    root = synthetic_mnist(tmp_path / "mnist", n_train=20, n_test=60)
    monkeypatch.setenv(user_datasets.ROOT, str(root))
    return root


@pytest.mark.parametrize("factory", ["four_digits", "four_digits_loader"])
def test_a_factory_dataset_is_read_whole_with_its_labels(digits_root, factory):
    images, labels = load_factory_dataset(f"tests.user_datasets:{factory}", shape=SHAPE)
    test = load_mnist(str(digits_root), "test")
    idx = user_datasets.picked_indices(test.labels)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images, test.images[idx]) and torch.equal(labels, test.labels[idx])


@pytest.mark.parametrize(("factory", "error", "match"), [
    ("nothing_here", ConfigError, "cannot import nothing_here from tests.user_datasets"),
    ("needs_root", ConfigError, r"needs_root\(\) must build the dataset with no arguments"),
    ("unlabelled", DataError, "has no labels"),
    ("empty", DataError, "is empty"),
    ("normalised", DataError, r"outside the valid input range \(the input box \[0.0, 1.0\]; min -0.42"),
    ("rgb", DataError, r"images of shape \(3, 28, 28\), the model takes \(1, 28, 28\)"),
    ("ragged", DataError, r"examples 0 to 1 are not all of one shape .*resize them"),
    ("with_nan", DataError, "holds 1 NaN or infinite values of 2352: drop or repair"),
])
def test_a_factory_dataset_that_is_not_usable_is_refused_by_name(factory, error, match):
    with pytest.raises(error, match=match):
        load_factory_dataset(f"tests.user_datasets:{factory}", shape=SHAPE)


def test_a_module_in_the_working_folder_is_not_imported(tmp_path, monkeypatch):
    (tmp_path / "planted_data.py").write_text("raise SystemExit('planted code ran')\ndef make(): return 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    with pytest.raises(ConfigError, match="the working folder is not searched"):
        load_factory_dataset("planted_data:make", shape=SHAPE)
