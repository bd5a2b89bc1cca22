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


class _Shifted(collide.Solver):
    """A solver of one's own: the exact solver's vertices, under another name and loss."""

    method = "shifted"
    config_type = collide.ExactConfig

    @property
    def loss_name(self):
        return "lp-again"

    def solve(self, model, site, problems, *, device, param, progress):
        assert isinstance(site, collide.sites.Site)  # resolved once, above
        return collide.ExactSolver(self.config).solve(model, site, problems, device=device, param=param,
                                                      progress=progress)


def test_a_solver_of_ones_own_is_one_class_and_gets_the_shared_checks(resolutions):
    model, target = _model(), torch.rand(12, generator=torch.Generator().manual_seed(1))
    config = collide.ExactConfig(threads=1)
    mine = collide.find_polytope(model, "2", target, n_vertices=2, method=_Shifted(config))
    exact = collide.find_polytope(model, "2", target, n_vertices=2, method="exact", config=config)
    assert mine.method == "shifted" and exact.method == "exact"
    assert torch.equal(mine.vertices, exact.vertices) and mine.valid.tolist() == exact.valid.tolist()
    # The criterion is the solver's own: the exact solver's also asks for an optimal outcome.
    assert mine.criterion == _Shifted(config).criterion and mine.criterion.outcome is None
    assert exact.criterion == collide.ExactSolver(config).criterion and exact.criterion.outcome == "optimal"
    assert resolutions == ["2", "2"]
    with pytest.raises(collide.errors.DataError, match="the target holds 1 NaN or infinite values of 12"):
        collide.find_polytope(model, "2", target.clone().index_fill_(0, torch.tensor([3]), float("nan")),
                              method=_Shifted(config))
    with pytest.raises(collide.errors.ConfigError, match="takes config=ExactConfig"):
        _Shifted(collide.GradientConfig())
    with pytest.raises(collide.errors.ConfigError, match="not both"):
        collide.find_polytope(model, "2", target, method=_Shifted(config), config=config)
