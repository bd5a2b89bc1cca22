"""The layer is resolved once per API call (issue 23 §1): a name becomes a Site at the
API's edge and the Site travels down; each resolution would be a forward probe."""

import sys

import pytest
import torch
from torch import nn

import collide
import collide.sites


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture
def resolutions(monkeypatch):
    """Counts calls of collide.sites.resolve, wherever a module holds it by name."""
    calls = []
    real = collide.sites.resolve

    def spy(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("name"))
        return real(*args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name == "collide" or name.startswith("collide."):
            for attr, value in list(vars(module).items()):
                if value is real:
                    monkeypatch.setattr(module, attr, spy)
    return calls


@pytest.mark.parametrize("method", ["gradient", "exact", "paper"])
def test_find_polytope_resolves_the_layer_once(resolutions, method):
    model, target = _model(), torch.rand(12, generator=torch.Generator().manual_seed(1))
    config = {"gradient": collide.GradientConfig(min_steps=10, max_steps=30), "exact": collide.ExactConfig(threads=1),
              "paper": collide.PaperConfig(lr=1e-2, steps=30)}[method]
    poly = collide.find_polytope(model, "2", target, n_vertices=2, method=method, config=config)
    assert resolutions == ["2"]
    assert poly.layer == "3"  # the canonical name, written at the storage edge


def test_find_polytopes_and_measure_resolve_the_layer_once_each(resolutions):
    model = _model()
    targets = torch.rand(3, 12, generator=torch.Generator().manual_seed(2))
    polys = collide.find_polytopes(model, "2", targets, n_vertices=2,
                                   config=collide.GradientConfig(min_steps=10, max_steps=30))
    assert resolutions == ["2"]
    resolutions.clear()
    collide.measure(model, "2", polys[0], n_samples=20)
    assert resolutions == ["2"]
