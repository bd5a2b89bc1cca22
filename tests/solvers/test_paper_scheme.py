"""The authors' vertex scheme (collide.solvers.paper), against hand-written updates."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from collide.config import PaperConfig
from collide.errors import ConfigError
from collide.solvers.paper import PAPER_TUNED_LR, PaperSolver, piecewise_lr, solve_paper
from tests.tolerances import UNCHANGED


def _tiny_net() -> nn.Sequential:
    """pre = (x0, x1 - 1): unit 0 can match a positive target, unit 1 is pushed down."""
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(2))
        fc.bias.copy_(torch.tensor([0.0, -1.0]))
    return nn.Sequential(OrderedDict(fc1=fc, relu1=nn.ReLU()))


def test_piecewise_lr_drops_tenfold_at_one_and_two_thirds():
    config = PaperConfig(lr=1e-3, steps=300)
    assert piecewise_lr(0, config) == 1e-3
    assert piecewise_lr(99, config) == 1e-3
    assert piecewise_lr(100, config) == pytest.approx(1e-4)
    assert piecewise_lr(199, config) == pytest.approx(1e-4)
    assert piecewise_lr(200, config) == pytest.approx(1e-5)
    assert piecewise_lr(299, config) == pytest.approx(1e-5)


def test_updates_follow_the_authors_momentum_by_hand():
    # v = 0.99 v + 0.01 g (from v = 0: the first step is 1% of the gradient; torch's SGD
    # with dampening would take all of it), x -= lr v, clipped to the box.
    config = PaperConfig(lr=0.1, steps=3)
    target = torch.tensor([[0.5, -0.5]])
    x = torch.tensor([0.9, 0.9])
    out = solve_paper(_tiny_net(), "relu1", target, x[None], torch.tensor([1]), config=config)
    v = torch.zeros(2)
    for step in range(3):
        g = torch.tensor([config.alpha * (x[0] - 0.5), config.beta])  # dL/dx0 = α(x0 − t0), dL/dx1 = β
        v = config.momentum * v + (1 - config.momentum) * g
        x = (x - piecewise_lr(step, config) * v).clamp(0, 1)
    assert torch.allclose(out.vertices[0], x, atol=UNCHANGED)


def test_a_batch_follows_the_paths_its_vertices_follow_alone(mlp_model):
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(1, 1, 28, 28, generator=gen) * 0.5
    init = torch.rand(3, 1, 28, 28, generator=gen)
    with torch.no_grad():
        t_pre = mlp_model[:3](target)
    units = torch.nonzero(t_pre[0] <= 0).flatten()[:3]
    config = PaperConfig(lr=1e-4, steps=30)
    both = solve_paper(mlp_model, "relu1", t_pre.expand(3, -1), init, units, config=config)
    for k in range(3):
        alone = solve_paper(mlp_model, "relu1", t_pre, init[k : k + 1], units[k : k + 1], config=config)
        assert torch.allclose(both.vertices[k], alone.vertices[0], atol=UNCHANGED)
    assert not torch.equal(both.vertices, init), "the scheme moved"


def test_config_checks():
    with pytest.raises(ConfigError, match="momentum"):
        PaperConfig(momentum=1.0)
    with pytest.raises(ConfigError, match="lr"):
        PaperConfig(lr=0)


def test_the_learning_rate_is_the_one_tuned_for_the_model_unless_set():
    assert PaperSolver(arch="mlp").config.lr == PAPER_TUNED_LR["mlp"]
    assert PaperSolver(PaperConfig(), arch="lenet5").config.lr == PAPER_TUNED_LR["lenet5"]
    assert PaperSolver(PaperConfig(lr=3e-3), arch="lenet5").config.lr == 3e-3
    assert PaperSolver(arch="mlp").record == {"paper_lr": PAPER_TUNED_LR["mlp"]}
    with pytest.raises(ConfigError, match="no tuned paper.lr for model 'vgg16'.*--set paper.lr"):
        PaperSolver(arch="vgg16")
    with pytest.raises(ConfigError, match="needs a learning rate for your model"):
        PaperSolver()
    with pytest.raises(ConfigError, match="paper.lr is not set"):
        solve_paper(_tiny_net(), "relu1", torch.tensor([[0.5, -1.0]]), torch.full((1, 2), 0.5),
                    torch.tensor([1]), config=PaperConfig())
