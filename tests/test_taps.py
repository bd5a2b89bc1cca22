import copy

import pytest
import torch
from torch import nn

from collide.errors import LayerError
from collide.taps import preactivation, resolve_layer, tap
from tests.tolerances import UNCHANGED

X28 = torch.zeros(1, 1, 28, 28)


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
    with tap(net, ["classifier.1", "classifier.0"], x[0]) as t:
        net(x)
    assert torch.allclose(t["classifier.1"].flatten(1), manual, atol=UNCHANGED)
    assert torch.allclose(t["classifier.0"].flatten(1), manual, atol=UNCHANGED)
    assert torch.allclose(preactivation(net, x, "classifier.1"), manual, atol=UNCHANGED)


def test_hooks_are_removed_even_when_the_forward_fails(mlp_model):
    def clean() -> bool:
        return all(not m._forward_pre_hooks and not m._forward_hooks for m in mlp_model.modules())

    with pytest.raises(RuntimeError), tap(mlp_model, ["relu1", "relu2"], torch.zeros(1, 28, 28)):
        mlp_model(torch.zeros(1, 5))  # wrong shape: the forward raises inside the block
    assert clean()
    preactivation(mlp_model, torch.zeros(1, 1, 28, 28), "relu2")
    assert clean()
    assert not torch.overrides._get_current_function_mode_stack()  # the function mode is gone too


def test_gradients_flow_through_the_tap(mlp_model):
    x = torch.rand(1, 1, 28, 28, requires_grad=True)
    preactivation(mlp_model, x, "relu1")[0, 3].backward()
    assert torch.allclose(x.grad.flatten(), mlp_model.fc1.weight[3], atol=UNCHANGED)


def test_unknown_and_non_relu_layers_list_what_works(mlp_model):
    with pytest.raises(LayerError, match="no layer named 'fc9'.*relu1, relu2"):
        resolve_layer(mlp_model, "fc9", X28)
    with pytest.raises(LayerError, match="'fc3' is a Linear, not an activation.*relu1"):
        resolve_layer(mlp_model, "fc3", X28)
    with pytest.raises(LayerError, match="'flatten' is a Flatten"):
        preactivation(mlp_model, torch.zeros(1, 1, 28, 28), "flatten")


def _bn_dropout_net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(2)
        return nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.Flatten(),
            nn.Linear(3 * 4 * 4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2),
        )


def test_preactivation_leaves_a_training_mode_model_as_it_was():
    net = _bn_dropout_net().train()
    net[2].eval()  # a caller's own mix of modes must come back as it was, module by module
    flags = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(net).eval()

    first = preactivation(net, x, "6")
    second = preactivation(net, x, "6")

    assert [m.training for m in net.modules()] == flags
    for key, value in net.state_dict().items():  # running statistics and batch counters included
        assert torch.equal(value, state[key]), key
    assert torch.equal(first, second)  # no dropout, no batch statistics
    with torch.no_grad():
        expected = reference[:6](x)  # everything before the ReLU, in eval mode
    assert torch.allclose(first, expected, atol=UNCHANGED)


def test_eval_mode_restores_the_flags_when_the_forward_fails():
    from collide.sites import eval_mode

    net = _bn_dropout_net().train()
    with pytest.raises(RuntimeError), eval_mode(net):
        assert not any(m.training for m in net.modules())
        net(torch.rand(2, 1, 5, 5))  # the wrong size for the Linear
    assert all(m.training for m in net.modules())
