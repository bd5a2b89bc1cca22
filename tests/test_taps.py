import pytest
import torch
from torch import nn

from collide.errors import LayerError
from collide.taps import preactivation, resolve_layer, tap
from tests.tolerances import UNCHANGED


def _vgg_like() -> nn.Module:
    """A small VGG-shaped net with torchvision's inplace ReLUs and nested Sequentials."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = nn.Module()
        net.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        net.classifier = nn.Sequential(
            nn.Linear(4 * 4 * 4, 16), nn.ReLU(inplace=True), nn.Linear(16, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)
        )

    def forward(x):
        return net.classifier(net.features(x).flatten(1))

    net.forward = forward
    return net


def test_mlp_preactivation_equals_manual_forward(mlp_model):
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    fc1, fc2 = mlp_model.fc1, mlp_model.fc2
    manual1 = x.flatten(1) @ fc1.weight.T + fc1.bias
    manual2 = manual1.clamp_min(0) @ fc2.weight.T + fc2.bias
    assert torch.allclose(preactivation(mlp_model, x, "relu1"), manual1, atol=UNCHANGED)
    assert torch.allclose(preactivation(mlp_model, x, "fc2"), manual2, atol=UNCHANGED)


def test_inplace_relu_taps_see_the_value_before_the_relu():
    net = _vgg_like()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    conv, fc6 = net.features[0], net.classifier[0]
    manual = nn.functional.max_pool2d(torch.relu(conv(x)), 2).flatten(1) @ fc6.weight.T + fc6.bias
    assert (manual < 0).any(), "the check needs negative pre-activations to mean anything"
    with tap(net, ["classifier.1", "classifier.0"]) as t:
        net(x)
    assert torch.allclose(t["classifier.1"].flatten(1), manual, atol=UNCHANGED)
    assert torch.allclose(t["classifier.0"].flatten(1), manual, atol=UNCHANGED)
    assert torch.allclose(preactivation(net, x, "classifier.1"), manual, atol=UNCHANGED)


def test_hooks_are_removed_even_when_the_forward_fails(mlp_model):
    with pytest.raises(RuntimeError), tap(mlp_model, ["relu1", "relu2"]):
        mlp_model(torch.zeros(1, 5))  # wrong shape: the forward raises inside the block
    assert all(len(m._forward_pre_hooks) == 0 for m in mlp_model.modules())
    preactivation(mlp_model, torch.zeros(1, 1, 28, 28), "relu2")
    assert all(len(m._forward_pre_hooks) == 0 for m in mlp_model.modules())


def test_gradients_flow_through_the_tap(mlp_model):
    x = torch.rand(1, 1, 28, 28, requires_grad=True)
    preactivation(mlp_model, x, "relu1")[0, 3].backward()
    assert torch.allclose(x.grad.flatten(), mlp_model.fc1.weight[3], atol=UNCHANGED)


def test_unknown_and_non_relu_layers_list_what_works(mlp_model):
    with pytest.raises(LayerError, match="no layer named 'fc9'.*relu1, relu2"):
        resolve_layer(mlp_model, "fc9")
    with pytest.raises(LayerError, match="'fc3' is a Linear, not a ReLU layer.*relu1"):
        resolve_layer(mlp_model, "fc3")
    with pytest.raises(LayerError, match="'flatten' is a Flatten"):
        preactivation(mlp_model, torch.zeros(1, 1, 28, 28), "flatten")
