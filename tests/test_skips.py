"""Calls a skip connection passes by: a collision there need not reach the output."""

import dataclasses

import torch
import torchvision
from torch import nn

import collide
from collide.experiments.configs.model import ModelExperiment
from collide.experiments.model import passed_by_note
from collide.skips import passed_by

# Logits of inputs that collide at a layer every path runs through agree to float32 rounding.
SAME_LOGITS = 1e-4


class _Residual(nn.Module):
    """out(r2(fc2(relu(fc1 x)) + x)): the input reaches ``r2`` around ``relu``."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.relu, self.fc2 = nn.Linear(6, 6), nn.ReLU(inplace=inplace), nn.Linear(6, 6)
        self.r2, self.out = nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.r2(self.fc2(self.relu(self.fc1(x))) + x))


def _max_logit_gap(model, layer, target):
    poly = collide.find_polytope(model, layer, target, method="exact", n_vertices=1)
    assert bool(poly.valid.all())
    with torch.no_grad():
        return float((model(poly.vertices) - model(target.unsqueeze(0))).abs().max())


def test_a_call_inside_a_residual_block_is_passed_by_and_its_collisions_reach_the_output_only_after_the_sum():
    model, target = _Residual(), torch.full((6,), 0.5)
    assert passed_by(model, target.unsqueeze(0)) == {"relu"}
    # the oracle: what "passed by" means, by forward passes of exact collisions
    assert _max_logit_gap(model, "relu", target) > 10 * SAME_LOGITS
    assert _max_logit_gap(model, "r2", target) <= SAME_LOGITS


def test_a_chain_has_none_and_an_in_place_relu_is_found_the_same():
    chain = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 5 * 5, 8),
                          nn.ReLU(), nn.Linear(8, 2))
    assert passed_by(chain, torch.rand(1, 1, 12, 12)) == set()
    assert passed_by(_Residual(inplace=True), torch.rand(1, 6)) == {"relu"}


def test_resnet_blocks_first_relu_is_passed_by_and_the_sum_relu_is_not():
    model = torchvision.models.resnet18(weights=None).eval()
    found = passed_by(model, torch.rand(1, 3, 32, 32))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert found == {f"{b}.relu#0" for b in blocks}


def test_the_model_is_left_as_it_came():
    model = _Residual().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    passed_by(model, torch.rand(1, 6))
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_model_experiment_notes_a_layer_that_is_passed_by():
    config = ModelExperiment(model="torchvision:resnet18", input_size=32)
    assert passed_by_note(config) == []  # its default, the sum's ReLU of layer2.1
    [note] = passed_by_note(dataclasses.replace(config, layer="layer2.1.relu#0"))
    assert note.startswith("layer layer2.1.relu#0: a skip connection passes it by")



class _NoGradRelu(nn.Module):
    """A ReLU computed without gradients: the graph cannot show that every path runs through it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x):
        with torch.no_grad():
            h = self.relu(self.fc1(x))
        return self.fc2(h)


class _InPlaceInput(nn.Module):
    """Centres its input in place before a plain chain."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x):
        x.sub_(0.5)
        return self.fc2(self.relu(self.fc1(x)))


def test_what_the_graph_cannot_show_a_cut_at_is_counted_passed_by_and_the_callers_input_is_left_alone():
    assert passed_by(_NoGradRelu(), torch.rand(1, 6)) == {"relu"}
    example = torch.rand(1, 6)
    kept = example.clone()
    assert passed_by(_InPlaceInput(), example) == set()
    assert torch.equal(example, kept)
    assert [s.name for s in collide.layers(_InPlaceInput(), example[0])] == ["relu"] and torch.equal(example, kept)
