"""The authors' optimizer as the benchmarks reimplement it (benchmarks/authors.py)."""

from collections import OrderedDict

import torch
from torch import nn

from benchmarks import authors
from collide.config import GradientConfig

CRITERION = GradientConfig(min_steps=0)


def _tiny_net() -> nn.Sequential:
    """pre = (x0, x1 - 1): unit 0 can match a positive target, unit 1 is pushed down."""
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(2))
        fc.bias.copy_(torch.tensor([0.0, -1.0]))
    return nn.Sequential(OrderedDict(fc1=fc, relu1=nn.ReLU()))


def test_piecewise_lr_steps_down_at_the_piece_boundaries():
    assert authors.piecewise_lr(0) == 0.1
    assert authors.piecewise_lr(9_999) == 0.1
    assert authors.piecewise_lr(10_000) == 0.01
    assert authors.piecewise_lr(29_999) == 0.001


def test_first_step_is_lr_times_one_percent_of_the_gradient():
    # v = 0.99·0 + 0.01·g on the first step; torch's SGD would take the whole g.
    net, target = _tiny_net(), torch.tensor([0.5, -0.5])
    init = torch.tensor([0.9, 0.9])
    out = authors.solve_one(net, "relu1", target, init, 1, criterion=GradientConfig(min_steps=5), max_steps=1)
    grad = torch.tensor([authors.ALPHA * (0.9 - 0.5), authors.BETA])  # dL/dx0 = α(x0 - t0), dL/dx1 = β
    assert torch.allclose(out.vertex, init - 0.1 * 0.01 * grad)


def test_reaches_the_collision_criterion_on_a_tiny_net():
    out = authors.solve_one(_tiny_net(), "relu1", torch.tensor([0.5, -0.5]), torch.tensor([0.9, 0.9]), 1,
                            criterion=CRITERION, max_steps=2000)
    assert out.converged
    assert out.rel_error <= CRITERION.rel_tol and out.violation <= CRITERION.neg_tol
    assert out.steps < 2000


def test_stops_at_once_when_the_init_already_collides():
    target = torch.tensor([0.5, -0.5])
    out = authors.solve_one(_tiny_net(), "relu1", target, torch.tensor([0.5, 0.5]), 1, criterion=CRITERION)
    assert out.converged and out.steps == 0
