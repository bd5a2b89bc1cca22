import pytest
import torch

from collide.errors import ConfigError
from collide.objective import (
    feature_rel_error,
    loss_minus,
    loss_plus,
    max_regime_violation,
    regime_penalty,
    saturated_units,
    total_variation,
)
from tests.tolerances import UNCHANGED

# A target with positive units 0, 2 and non-positive units 1, 3, 4.
TARGET = torch.tensor([[2.0, -1.0, 3.0, 0.0, -0.5]])
PRE = torch.tensor([[1.0, 0.5, 3.5, -2.0, 0.25]], requires_grad=True)


def test_loss_plus_by_hand():
    # ½((1-2)² + (3.5-3)²) = ½(1 + 0.25)
    assert loss_plus(PRE, TARGET).item() == pytest.approx(0.625, abs=UNCHANGED)
    (grad,) = torch.autograd.grad(loss_plus(PRE, TARGET).sum(), PRE)
    assert torch.allclose(grad, torch.tensor([[-1.0, 0.0, 0.5, 0.0, 0.0]]))


def test_loss_minus_by_hand():
    unit = torch.tensor([3])
    # ỹ₃ + |ỹ₁| + |ỹ₄| = -2 + 0.5 + 0.25
    assert loss_minus(PRE, TARGET, unit).item() == pytest.approx(-1.25, abs=UNCHANGED)
    (grad,) = torch.autograd.grad(loss_minus(PRE, TARGET, unit).sum(), PRE)
    assert torch.allclose(grad, torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0]]))


def test_loss_minus_refuses_a_positive_unit():
    with pytest.raises(ConfigError, match="non-positive"):
        loss_minus(PRE, TARGET, torch.tensor([0]))


def test_penalty_and_violation_by_hand():
    # relu on units 1, 3, 4: 0.5, 0, 0.25 -> ½(0.25 + 0.0625)
    assert regime_penalty(PRE, TARGET).item() == pytest.approx(0.15625, abs=UNCHANGED)
    assert max_regime_violation(PRE, TARGET).item() == pytest.approx(0.5)


def test_feature_error_by_hand():
    # post = (1, .5, 3.5, 0, .25), target post = (2, 0, 3, 0, 0)
    expected = (1 + 0.25 + 0.25 + 0.0625) ** 0.5 / 13**0.5
    assert feature_rel_error(PRE, TARGET).item() == pytest.approx(expected, abs=UNCHANGED)
    assert feature_rel_error(TARGET, TARGET).item() == 0.0


def test_saturated_units_in_index_order():
    assert saturated_units(TARGET[0], 3).tolist() == [1, 3, 4]
    with pytest.raises(ConfigError, match="fewer than the 4 vertices"):
        saturated_units(TARGET[0], 4)


def test_total_variation_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 1.0]]]])
    # vertical |3-0| + |1-1|, horizontal |1-0| + |1-3|
    assert total_variation(x).item() == pytest.approx(6.0)
