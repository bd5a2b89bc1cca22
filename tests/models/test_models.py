import json

import pytest
import torch

from collide.config import TrainConfig
from collide.datasets.mnist import MNIST_DIGEST, load_mnist
from collide.errors import CheckpointError, ConfigError
from collide.experiments.configs.activations import ACTIVATIONS, arch_of
from collide.models.zoo import (
    MLP_ACTIVATIONS,
    build_model,
    checkpoint_path,
    lenet5,
    load_checkpoint,
    mlp,
    save_checkpoint,
    shipped_checkpoint,
    shipped_checkpoints,
    train,
)
from tests.support import planted_pickle


def test_architectures_have_the_papers_shapes():
    x = torch.zeros(2, 1, 28, 28)
    assert mlp()(x).shape == (2, 10)
    assert lenet5()(x).shape == (2, 10)
    assert [m.out_features for m in mlp() if isinstance(m, torch.nn.Linear)] == [256, 256, 10]
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model("resnet")


def test_the_mlp_with_another_activation_is_the_same_mlp_with_that_activation():
    """``mlp-NAME``: the paper's widths and Linear names, the activation module named
    ``NAME1``/``NAME2``, the same initial weights as the ReLU MLP for the same seed (the
    activations hold no parameters), and a forward pass that is the manual one with torch's
    function (oracle: ``x @ W.T + b`` through ``torch.tanh`` and friends)."""
    functions = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                 "elu": torch.nn.functional.elu, "gelu": torch.nn.functional.gelu}
    assert set(ACTIVATIONS) == {"relu", *MLP_ACTIVATIONS} and arch_of("relu") == "mlp"
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for activation in ACTIVATIONS:
        torch.manual_seed(7)
        model = build_model(arch_of(activation))
        torch.manual_seed(7)
        relu_mlp = mlp()
        assert [name for name, _ in model.named_children()] == [
            "flatten", "fc1", f"{activation}1", "fc2", f"{activation}2", "fc3"]
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), relu_mlp.state_dict().values(),
                                                     strict=True))
        f, (w1, b1, w2, b2, w3, b3) = functions[activation], [p.detach() for p in model.parameters()]
        manual = f(f(x.flatten(1) @ w1.T + b1) @ w2.T + b2) @ w3.T + b3
        with torch.no_grad():
            torch.testing.assert_close(model(x), manual, rtol=0, atol=1e-6)
    # The ReLU MLP keeps the names its shipped checkpoints and stored rows use.
    assert [name for name, _ in mlp().named_children()] == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    with pytest.raises(ConfigError, match="unknown MLP activation 'swish'"):
        mlp("swish")


@pytest.mark.parametrize("arch", ["mlp", "lenet5", "mlp-tanh"])
def test_training_is_deterministic_and_learns(tiny_mnist, arch):
    train_split, test_split = load_mnist(tiny_mnist, "train"), load_mnist(tiny_mnist, "test")
    config = TrainConfig(arch=arch, epochs=2)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    a, meta = train(train_split, test_split, config=config)
    b, _ = train(train_split, test_split, config=config)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert meta["test_accuracy"] >= 0.5  # chance is 0.1; two epochs on 1000 images
    # The caller's torch settings come back as they were.
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)
    assert meta["machine"]["torch"] == torch.__version__ and meta["config"]["threads"] == 1


def test_a_retrained_checkpoint_is_the_same_file(tiny_mnist, tmp_path):
    """Same data, config and machine: the same bytes, so the same sha256 (torch.save must
    not name the archive after a temporary file)."""
    train_split, test_split = load_mnist(tiny_mnist, "train"), load_mnist(tiny_mnist, "test")
    config = TrainConfig(epochs=1, min_accuracy=0.0)
    digests = [save_checkpoint(train(train_split, test_split, config=config)[0], {"arch": "mlp"},
                               tmp_path / f"{k}.pt")["sha256"] for k in range(2)]
    assert digests[0] == digests[1]


def test_checkpoint_roundtrip_and_tamper_detection(tmp_path, mlp_model):
    path = checkpoint_path(tmp_path, TrainConfig(), "0" * 64)
    meta = save_checkpoint(mlp_model, {"arch": "mlp", "test_accuracy": 0.5}, path)
    loaded, meta2 = load_checkpoint(path)
    assert meta2["sha256"] == meta["sha256"] and meta2["test_accuracy"] == 0.5
    assert all(torch.equal(x, y) for x, y in zip(loaded.state_dict().values(), mlp_model.state_dict().values(),
                                                 strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.json"]
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(CheckpointError, match="the file changed"):
        load_checkpoint(path)


def test_missing_checkpoint_and_metadata_are_clear_errors(tmp_path, mlp_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    path = tmp_path / "m.pt"
    save_checkpoint(mlp_model, {"arch": "mlp"}, path)
    (tmp_path / "m.pt.json").unlink()
    with pytest.raises(CheckpointError, match="metadata .* is missing"):
        load_checkpoint(path)


def test_checkpoint_name_follows_the_training_config_and_the_data(tmp_path):
    a = checkpoint_path(tmp_path, TrainConfig(epochs=3), "a" * 64)
    b = checkpoint_path(tmp_path, TrainConfig(epochs=4), "a" * 64)
    c = checkpoint_path(tmp_path, TrainConfig(epochs=3), "b" * 64)
    assert len({a, b, c}) == 3 and a.name.startswith("mlp-")
    # Another activation is another architecture: its own checkpoint, named after it.
    d = checkpoint_path(tmp_path, TrainConfig(epochs=3, arch="mlp-tanh"), "a" * 64)
    assert d not in {a, b, c} and d.name.startswith("mlp-tanh-")
    assert json.dumps(str(a))


def test_shipped_checkpoints_load_and_match_their_metadata():
    """Each shipped checkpoint verifies against its sha256 and is found by its own training
    config and MNIST's digest: what `make run` uses by default."""
    shipped = shipped_checkpoints()
    assert {(m["config"]["arch"], m["config"]["seed"]) for m in shipped} >= {("mlp", 0), ("lenet5", 0), ("mlp", 1)}
    for meta in shipped:
        assert meta["data_digest"] == MNIST_DIGEST and meta["dataset"] == "MNIST"
        assert {"cpu", "torch", "cpu_capability"} <= set(meta["machine"])
        path = shipped_checkpoint(TrainConfig(**meta["config"]), meta["data_digest"])
        assert path is not None and path.name == meta["file"]
        _, loaded = load_checkpoint(path)
        assert loaded["sha256"] == meta["sha256"]
    assert shipped_checkpoint(TrainConfig(), "f" * 64) is None


def test_a_checkpoint_that_is_not_tensors_is_refused_without_running_it(tmp_path, mlp_model):
    """Even with matching metadata (a planted pair), a checkpoint whose pickle holds more than
    tensors is a CheckpointError that does not advise weights_only=False, and nothing runs."""
    from collide._io import file_sha256

    path = tmp_path / "m.pt"
    save_checkpoint(mlp_model, {"arch": "mlp"}, path)
    marker = tmp_path / "ran"
    path.write_bytes(planted_pickle(marker))
    side = tmp_path / "m.pt.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "sha256": file_sha256(path)}))
    with pytest.raises(CheckpointError, match="is not a collide checkpoint") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value) and not marker.exists()
    side.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"m\.pt\.json is not JSON"):
        load_checkpoint(path)
