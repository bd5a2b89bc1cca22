"""collide.find_polytope and collide.measure against oracles: a manual forward pass, the
samples rebuilt from the returned weights, and the errors a user meets."""

import pytest
import torch
from torch import nn

import collide
from collide.errors import ConfigError, DataError, LayerError
from collide.polytope import combine
from tests.tolerances import LP_STORED_REL_ERROR_F64, UNCHANGED


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))


def _target():
    return torch.rand(20, generator=torch.Generator().manual_seed(1))


def _features(model, x):
    """The first layer's pre-activation by hand, in float64: W x + b."""
    lin = model[0]
    return x.double().reshape(len(x), -1) @ lin.weight.double().T + lin.bias.double()


@pytest.mark.parametrize("method", ["gradient", "exact"])
def test_vertices_share_the_targets_features_by_a_manual_forward_pass(method):
    model, target = _model(), _target()
    poly = collide.find_polytope(model, "1", target, n_vertices=4, method=method)
    assert poly.vertices.shape == (4, 20) and poly.vertices.dtype == torch.float32 and poly.valid.all()
    t, v = _features(model, target[None])[0], _features(model, poly.vertices)
    positive = t > 0
    rel = (torch.relu(v) - torch.relu(t)).norm(dim=1) / torch.relu(t).norm()
    tol = {"gradient": collide.GradientConfig().rel_tol, "exact": LP_STORED_REL_ERROR_F64}[method]
    assert (rel <= tol).all() and torch.allclose(rel, poly.rel_error, atol=UNCHANGED)
    pushed = v[torch.arange(4), poly.units]
    assert (pushed < t[poly.units]).all() and not positive[poly.units].any()  # pushed units are non-positive ones
    assert ((v[:, ~positive]) <= tol * t.abs().max()).all()


def test_the_callers_model_and_torch_settings_are_left_alone():
    model, target = _model(), _target()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    poly = collide.find_polytope(model, "1", target, n_vertices=2)
    collide.measure(model, "1", poly, n_samples=50)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.backends.cuda.matmul.allow_tf32 == tf32


def test_measure_classifies_the_samples_it_returns_and_is_seeded():
    model, target = _model(), _target()
    poly = collide.find_polytope(model, "1", target, n_vertices=3, method="exact")
    m = collide.measure(model, "1", poly, n_samples=300, seed=4)
    assert m.weights.shape == (300, 3) and torch.allclose(m.weights.sum(1), torch.ones(300, dtype=torch.float64))
    with torch.no_grad():
        logits = model.eval()(combine(m.weights, poly.vertices))
    t_class = int(model(target[None]).argmax())
    assert torch.equal(logits.argmax(1), m.sample_pred)
    assert m.success_rate == pytest.approx(float((m.sample_pred == t_class).double().mean()))
    assert m.target_class == t_class and m.n_valid == 3 and m.invalid_reason == ""
    assert m.vertex_avg_distance == pytest.approx(float(torch.pdist(poly.vertices.double()).mean()))
    again = collide.measure(model, "1", poly, n_samples=300, seed=4)
    assert torch.equal(again.weights, m.weights) and again.success_rate == m.success_rate
    assert not torch.equal(collide.measure(model, "1", poly, n_samples=300, seed=5).weights, m.weights)


def test_a_polytope_without_two_valid_vertices_is_measured_as_none():
    model, target = _model(), _target()
    poly = collide.find_polytope(model, "1", target, n_vertices=2, method="exact")
    pinned = collide.check_polytope(model, "1", target.expand(2, -1).clone(), target, target, poly.units,
                                    method="exact", criterion=poly.criterion, solver=poly.solver)
    m = collide.measure(model, "1", pinned)
    assert not pinned.valid.any() and "pushed unit" in pinned.reasons[0]
    assert m.n_samples == 0 and m.success_rate != m.success_rate and "0 of 2 vertices valid" in m.invalid_reason


class _Keyed(nn.Module):
    """A model whose forward returns its logits inside a dict (or a tuple)."""

    def __init__(self, wrap=lambda t: {"logits": t}):
        super().__init__()
        self.net, self.wrap = _model(), wrap

    def forward(self, x):
        return self.wrap(self.net(x)) if self.wrap is not tuple else (self.net(x),)


@pytest.mark.parametrize("call, error, words", [
    (dict(layer="fc9"), LayerError, "no layer named 'fc9'; layers that work: 1"),
    (dict(layer="3"), LayerError, "is a Linear, not an activation"),
    (dict(target=torch.rand(1, 20)), DataError, "without a batch dimension"),
    (dict(target=torch.full((20,), float("nan"))), DataError, "NaN"),
    (dict(target=torch.full((20,), 3.0)), DataError, "outside the valid input range"),
    (dict(init=torch.rand(21)), DataError, "init has shape"),
    (dict(method="magic"), ConfigError, "unknown method 'magic'"),
    (dict(method="exact", config=collide.GradientConfig()), ConfigError, "takes config=ExactConfig(...)"),
    (dict(method="paper"), ConfigError, "PaperConfig(lr=...)"),
    (dict(model=lambda: _model().double()), ConfigError, "pass model.float()"),
    (dict(n_vertices=0), ConfigError, "expected n_vertices >= 1"),
    (dict(units=torch.zeros(0, dtype=torch.long)), ConfigError, "units is empty"),
    (dict(model=lambda: _Keyed()), DataError, "returns a dict (keys ['logits']), not a tensor of logits"),
    (dict(model=lambda: _Keyed(tuple)), DataError, "returns a tuple, not a tensor of logits"),
])
def test_bad_input_is_named(call, error, words):
    args = {"layer": "1", "target": _target(), "model": _model, **call}
    with pytest.raises(error) as raised:
        collide.find_polytope(args.pop("model")(), args.pop("layer"), args.pop("target"), **args)
    assert words in str(raised.value)


def test_bounds_and_the_paper_scheme_with_a_rate():
    model, target = _model(), _target() * 2 - 1  # a model of inputs in [-1, 1]
    poly = collide.find_polytope(model, "1", target, n_vertices=2, bounds=(-1.0, 1.0))
    assert poly.vertices.min() >= -1 and poly.vertices.max() <= 1 and poly.valid.all()
    paper = collide.find_polytope(model, "1", target, n_vertices=2, method="paper", bounds=(-1.0, 1.0),
                                  config=collide.PaperConfig(lr=1e-3, steps=300))
    assert paper.method == "paper" and paper.vertices.shape == (2, 20)
    with pytest.raises(ConfigError, match="n_samples"):
        collide.measure(model, "1", poly, n_samples=0)
    with pytest.raises(ConfigError, match="sampler"):
        collide.measure(model, "1", poly, sampler="uniform")
