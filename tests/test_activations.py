"""Saturated regimes of every supported activation, the generalised objective, and
gradient collisions at each activation, rechecked in float64 by code that is not collide's."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import collide
from collide.activations import RELU, RELU_SATURATION, lookup
from collide.config import GradientConfig, PaperConfig
from collide.errors import ConfigError, LayerError
from collide.experiments.configs.mnist import MnistExperiment
from collide.objective import loss_minus, loss_plus, max_regime_violation, regime_penalty, saturated_units
from collide.sites import probe
from collide.solvers import solver_for
from tests.tolerances import SMOOTH_REL_ERROR, THRESHOLD, UNCHANGED

TOL = 0.01

# Closed forms of the lower threshold (and the upper one, where there is one).
CLOSED = {
    "sigmoid": (math.log(TOL / (1 - TOL)), -math.log(TOL / (1 - TOL))),
    "tanh": (math.atanh(TOL - 1), math.atanh(1 - TOL)),
    "elu": (math.log(TOL), math.inf),
    "softplus": (math.log(math.expm1(TOL)), math.inf),
    "logsigmoid": (-math.inf, -math.log(math.expm1(TOL))),
}


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_thresholds_match_their_closed_forms(name):
    sat = lookup(name).at(TOL)
    below, above = CLOSED[name]
    assert sat.below == pytest.approx(below, abs=THRESHOLD) if math.isfinite(below) else sat.below == below
    assert sat.above == pytest.approx(above, abs=THRESHOLD) if math.isfinite(above) else sat.above == above


@pytest.mark.parametrize("name", ["gelu", "silu", "mish", "selu", "celu"])
def test_a_regime_holds_all_the_way_to_the_asymptote(name):
    """Non-monotone ones dip below 0 before their asymptote: the regime starts past the dip."""
    act = lookup(name)
    sat = act.at(TOL)
    inside = torch.linspace(-60, sat.below, 100_001, dtype=torch.float64)
    assert ((act.post(inside) - act.lower).abs() <= TOL).all()
    just_out = torch.tensor(sat.below + 1e-6, dtype=torch.float64)
    assert float((act.post(just_out) - act.lower).abs()) > TOL
    if name in ("gelu", "silu", "mish"):  # the dip is deeper than TOL, and left out
        assert float(act.post(torch.linspace(-3, 0, 1001, dtype=torch.float64)).min()) < -TOL


def test_a_tolerance_deeper_than_a_dip_ends_the_regime_at_the_dip():
    """GELU dips to -0.17 at z = -0.75: past that, going inwards leads back to 0."""
    sat = lookup("gelu").at(0.3)
    z = torch.linspace(-3, 0, 30_001, dtype=torch.float64)
    assert sat.below == pytest.approx(float(z[F.gelu(z).argmin()]), abs=1e-3)


def test_piecewise_linear_ones_use_their_flat_pieces_exactly():
    assert (RELU_SATURATION.below, RELU_SATURATION.above) == (0.0, math.inf)
    assert (RELU.at(0.3).below, RELU.at(0.3).above) == (0.0, math.inf)  # the tolerance does not apply
    assert (lookup("relu6").at(TOL).below, lookup("relu6").at(TOL).above) == (0.0, 6.0)
    hardtanh = lookup("hardtanh", {"min_val": -0.5, "max_val": 2.0}).at(TOL)
    assert (hardtanh.below, hardtanh.above) == (-0.5, 2.0)
    assert (lookup("hardsigmoid").at(TOL).below, lookup("hardsigmoid").at(TOL).above) == (-3.0, 3.0)
    assert (lookup("Hardswish").at(TOL).below, lookup("Hardswish").at(TOL).above) == (-3.0, math.inf)


def test_bad_tolerances_are_refused_by_name():
    with pytest.raises(ConfigError, match="too small for sigmoid"):
        lookup("sigmoid").at(1e-30)
    with pytest.raises(ConfigError, match="whole range of sigmoid"):
        lookup("sigmoid").at(1.5)
    with pytest.raises(ConfigError, match="saturation_tol"):
        GradientConfig(saturation_tol=0)
    assert lookup("leakyrelu") is None and lookup("glu") is None and lookup("softsign") is None


# tanh at TOL: saturated at z <= -2.6467 (low) or z >= 2.6467 (high).
TARGET = torch.tensor([[0.5, -3.0, 4.0, -1.0, 3.0]], dtype=torch.float64)
PRE = torch.tensor([[0.25, -2.0, 5.0, 0.0, 2.0]], dtype=torch.float64, requires_grad=True)


def test_two_sided_objective_by_hand():
    sat = lookup("tanh").at(TOL)
    b, a = sat.below, sat.above
    assert saturated_units(TARGET[0], 3, sat=sat).tolist() == [1, 2, 4]
    # L+: the unsaturated units 0 and 3 keep their pre-activations.
    assert loss_plus(PRE, TARGET, sat=sat).item() == pytest.approx(0.5 * (0.25**2 + 1.0), abs=UNCHANGED)
    # Pushing unit 2 (upper regime) is -y2, plus |y - θ| over the other saturated units 1 and 4.
    expected = -5.0 + abs(-2.0 - b) + abs(2.0 - a)
    assert loss_minus(PRE, TARGET, torch.tensor([2]), sat=sat).item() == pytest.approx(expected, abs=UNCHANGED)
    (grad,) = torch.autograd.grad(loss_minus(PRE, TARGET, torch.tensor([2]), sat=sat).sum(), PRE)
    assert grad.tolist() == [[0.0, 1.0, -1.0, 0.0, -1.0]]  # unit 1 is above b, unit 4 below a
    # Unit 1 left its regime by -2 - b, unit 4 by a - 2; the penalty and the violation see both.
    assert regime_penalty(PRE, TARGET, sat=sat).item() == pytest.approx(
        0.5 * ((-2.0 - b) ** 2 + (a - 2.0) ** 2), abs=UNCHANGED)
    assert max_regime_violation(PRE, TARGET, sat=sat).item() == pytest.approx(max(-2.0 - b, a - 2.0), abs=UNCHANGED)
    with pytest.raises(ConfigError, match="saturated"):
        loss_minus(PRE, TARGET, torch.tensor([0]), sat=sat)


def _post(name: str, z: np.ndarray) -> np.ndarray:
    """Each activation written out in numpy from its definition (not torch's, not collide's)."""
    erf = np.vectorize(math.erf)
    softplus = np.logaddexp(0.0, z)
    return {
        "Tanh": np.tanh(z), "Sigmoid": 1 / (1 + np.exp(-z)), "ELU": np.where(z > 0, z, np.expm1(z)),
        "SELU": 1.0507009873554805 * np.where(z > 0, z, 1.6732632423543772 * np.expm1(z)),
        "GELU": 0.5 * z * (1 + erf(z / math.sqrt(2))), "SiLU": z / (1 + np.exp(-z)), "Mish": z * np.tanh(softplus),
        "Softplus": softplus, "Hardswish": z * np.clip(z + 3, 0, 6) / 6, "Hardsigmoid": np.clip(z / 6 + 0.5, 0, 1),
        "ReLU6": np.clip(z, 0, 6),
    }[name]


ACTIVATIONS = [nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish,
               nn.Hardsigmoid, nn.ReLU6]


@pytest.mark.parametrize("module", ACTIVATIONS, ids=lambda m: m.__name__)
def test_gradient_vertices_collide_at_every_activation(module):
    """Five vertices, each rechecked in float64 by a numpy forward pass: the post-activation
    error within the criterion, the saturated units in their regime, the pushed unit deeper."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), module(), nn.Linear(48, 10))
    with torch.no_grad():
        model[1].weight.mul_(20)  # weights that saturate a share of the units
    target = torch.rand(1, 8, 8)
    poly = collide.find_polytope(model, "2", target, n_vertices=5, method="gradient",
                                 config=GradientConfig(max_steps=1500))
    assert poly.valid.all(), poly.reasons
    w, b = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    t_pre = w @ target.double().flatten().numpy() + b
    sat = lookup(module.__name__).at(TOL)
    name = module.__name__
    t_post = _post(name, t_pre)
    for v, unit in zip(poly.vertices, poly.units.tolist(), strict=True):
        pre = w @ v.double().flatten().numpy() + b
        assert np.linalg.norm(_post(name, pre) - t_post) / np.linalg.norm(t_post) <= SMOOTH_REL_ERROR
        low, high = t_pre <= sat.below, t_pre >= sat.above
        assert (pre[low] <= sat.below + GradientConfig().neg_tol).all()
        assert (pre[high] >= sat.above - GradientConfig().neg_tol).all()
        deeper = pre[unit] - t_pre[unit] if high[unit] else t_pre[unit] - pre[unit]
        assert deeper >= GradientConfig().push_margin * np.abs(t_pre).max()
    assert (poly.vertices - target).flatten(1).norm(dim=1).min() > 0.1  # they moved
    m = collide.measure(model, "2", poly, n_samples=200)
    assert m.n_samples == 200 and m.samples_max_feature_rel_error <= 0.05


def test_functional_and_reused_calls_carry_their_settings():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(6, 6), nn.Linear(6, 6), nn.Tanh()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self.fc1(x))
            x = self.act(F.gelu(self.fc2(x), approximate="tanh"))
            return F.elu(x, 0.5).sum(-1, keepdim=True).expand(-1, 2)

    net = Net()
    sites = {s.name: s for s in probe(net, torch.rand(1, 6))}
    assert list(sites) == ["act#0", "gelu()", "act#1", "elu()"]
    assert sites["gelu()"].function == lookup("gelu", {"approximate": "tanh"})
    assert sites["elu()"].function.lower == -0.5
    assert sites["act#1"].methods == ("gradient", "paper")
    with pytest.raises(LayerError, match=r"'act#1' is a Tanh call: the exact LP .*method='gradient'"):
        collide.find_polytope(net, "act#1", torch.rand(6), method="exact")


def test_the_tolerance_changes_no_digest_at_its_default_and_no_relu_row():
    assert MnistExperiment().digest() == MnistExperiment(gradient=GradientConfig(saturation_tol=0.01)).digest()
    assert MnistExperiment().digest() != MnistExperiment(gradient=GradientConfig(saturation_tol=0.05)).digest()
    relu_site = next(s for s in probe(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), torch.rand(1, 3)))
    tanh_site = next(s for s in probe(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), torch.rand(1, 3)))
    solver = solver_for("gradient", None)
    assert "saturation_tol" not in solver.criterion.at(relu_site).to_dict()
    assert solver.criterion.at(tanh_site).to_dict()["saturation_tol"] == 0.01
    paper = solver_for("paper", PaperConfig(lr=1e-3, saturation_tol=0.05))
    assert paper.criterion.at(tanh_site).saturation(tanh_site).tol == 0.05
