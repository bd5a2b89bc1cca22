import pytest
import torch
from torch import nn

from collide.datasets.folders import bundled_corpus, list_folder, load_image
from collide.errors import CheckpointError, DataError
from collide.models import tensor_file
from collide.models.tensor_file import build_with_weights
from collide.models.vgg import IMAGENET_MEAN, IMAGENET_STD, resolve_weights, vgg16_from_source
from collide.taps import preactivation, resolve_layer
from tests.tolerances import EQUIVALENT

pytestmark = pytest.mark.slow  # VGG-16 has 138M parameters even at 32x32 inputs


@pytest.fixture(scope="module")
def vgg():
    return vgg16_from_source(resolve_weights("random", seed=0))


def test_fc6_preactivation_equals_manual_forward(vgg):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    net = vgg.net
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in net.modules()), "torchvision's ReLUs are inplace"
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        h = (x - mean) / std
        for layer in net.features:
            h = torch.relu(h) if isinstance(layer, nn.ReLU) else layer(h)
        h = net.avgpool(h).flatten(1)
        manual = h @ net.classifier[0].weight.T + net.classifier[0].bias
        tapped = preactivation(vgg, x, "fc6")
    assert (manual < 0).any() and (manual > 0).any()
    assert torch.allclose(tapped, manual, atol=EQUIVALENT, rtol=EQUIVALENT)
    assert resolve_layer(vgg, "fc6", x) == "net.classifier.1" == resolve_layer(vgg, "net.classifier.0", x)


def test_weights_file_roundtrip_and_tamper(tmp_path, vgg):
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.net.state_dict(), path)
    source = resolve_weights(str(path))
    assert not source["random"] and len(source["sha256"]) == 64
    again = vgg16_from_source(source)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again(x), vgg(x))
    with open(path, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(CheckpointError, match="changed"):
        vgg16_from_source(source)


class _WithExtra(nn.Module):
    """A linear layer and a batch norm (a buffer the state dict holds), and optionally a
    buffer it leaves out (non-persistent)."""

    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.fc, self.bn = nn.Linear(4, 3), nn.BatchNorm1d(3)
        self.extra = extra
        if extra:
            self.register_buffer("scale", torch.full((3,), 2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.fc(x))
        return y * self.scale if self.extra else y


@pytest.mark.parametrize("extra", [False, True])
def test_a_weights_file_is_built_without_drawing_the_init_it_replaces(tmp_path, extra):
    # The oracle: the module built as usual and given the file's tensors.
    torch.manual_seed(5)
    saved = _WithExtra(extra)
    saved.bn.running_mean.normal_()
    torch.save(saved.state_dict(), tmp_path / "w.pth")
    source = {"weights": str(tmp_path / "w.pth"), "sha256": ""}
    before = torch.get_rng_state()
    net = build_with_weights(lambda: _WithExtra(extra), source, what="test", fix="-", skip_init=True)
    # No init drawn where the file holds every tensor; a non-persistent buffer builds it as usual.
    assert torch.equal(torch.get_rng_state(), before) != extra
    for key, value in saved.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    assert all(isinstance(p, nn.Parameter) and p.requires_grad and not p.is_meta for p in net.parameters())
    assert not any(b.is_meta for b in net.buffers())
    x = torch.rand(2, 4)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), saved.eval()(x))


def test_random_weights_built_again_are_the_same_draw_in_tensors_of_their_own(monkeypatch):
    # The oracle: the module drawn afresh from its seed, no copy of an earlier draw.
    fresh = tensor_file._drawn(_WithExtra, 7)
    draws = []
    drawn = tensor_file._drawn
    monkeypatch.setattr(tensor_file, "_drawn", lambda build, seed: draws.append(seed) or drawn(build, seed))

    def build(seed: int) -> nn.Module:
        return build_with_weights(_WithExtra, {"weights": "random", "seed": seed}, what="test-random", fix="-",
                                  skip_init=True)

    before = torch.get_rng_state()
    first, again = build(7), build(7)
    assert draws == [7]  # the second is a copy of the first's draw
    assert torch.equal(torch.get_rng_state(), before)
    for net in (first, again):
        for key, value in fresh.state_dict().items():
            assert torch.equal(net.state_dict()[key], value), key
        assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    with torch.no_grad():  # each model's tensors are its own: the next build is not changed
        first.fc.weight.add_(1.0)
        again.fc.bias.add_(1.0)
    third = build(7)
    assert torch.equal(third.fc.weight, fresh.fc.weight) and torch.equal(third.fc.bias, fresh.fc.bias)
    other = build(8)
    assert draws == [7, 8]
    assert torch.equal(other.fc.weight, drawn(_WithExtra, 8).fc.weight)
    assert not torch.equal(other.fc.weight, fresh.fc.weight)


def test_missing_or_wrong_weights_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*'random'"):
        resolve_weights(str(tmp_path / "none.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="is not a VGG-16 state dict"):
        vgg16_from_source(resolve_weights(str(bad)))


def test_random_weights_are_seeded():
    a = vgg16_from_source(resolve_weights("random", seed=3))
    b = vgg16_from_source(resolve_weights("random", seed=3))
    assert torch.equal(a.net.classifier[0].weight, b.net.classifier[0].weight)


def test_image_folder_errors_and_loading(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_folder(tmp_path / "none")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        list_folder(tmp_path / "flat")
    root = bundled_corpus(tmp_path / "corpus", size=40)
    classes, items = list_folder(root)
    assert len(classes) >= 2 and len(items) >= 8
    img = load_image(items[0][0], 32)
    assert img.shape == (3, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        list_folder(root)


def test_a_weights_file_that_is_not_tensors_is_refused_without_running_it(tmp_path):
    """A pickle that would run code when unpickled: refused, not run, and the message never
    advises turning torch's safe loading off."""
    from tests.support import planted_pickle

    marker = tmp_path / "ran"
    bad = tmp_path / "planted.pth"
    bad.write_bytes(planted_pickle(marker))
    with pytest.raises(CheckpointError, match="is not a VGG-16 state dict") as err:
        vgg16_from_source(resolve_weights(str(bad)))
    assert "weights_only" not in str(err.value) and not marker.exists()


def test_upper_case_suffixes_count_and_a_broken_image_is_named(tmp_path):
    from collide.datasets.folders import check_images

    root = bundled_corpus(tmp_path / "corpus", size=40)
    classes, items = list_folder(root)
    first = items[0][0]
    shouted = first.with_name("SHOUT.JPG")
    first.rename(shouted)
    assert shouted in [p for p, _ in list_folder(root)[1]]
    check_images([p for p, _ in list_folder(root)[1]])
    broken = shouted.with_name("broken.png")
    broken.write_bytes(shouted.read_bytes()[:50])  # a truncated file: its header, no pixels
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        check_images([broken])
