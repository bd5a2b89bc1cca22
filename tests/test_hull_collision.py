"""A hull of colliding vertices need not collide past the first layer: say so, never call
its success rate a collision's."""

import torch
from torch import nn

from collide.api import check_polytope, measure
from collide.validity import Criterion, hull_collides

CRITERION = Criterion(rel_tol=1e-2, neg_tol=1e-2, push_margin=1e-2)


def _abs_net() -> nn.Sequential:
    """Layer 2 reads |a| (relu(a) + relu(−a)) and b − 1, for inputs (a, b)."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        net[2].bias.copy_(torch.tensor([0.0, -1.0]))
        net[4].weight.copy_(torch.eye(2))
        net[4].bias.zero_()
    return net


def test_colliding_vertices_whose_hull_leaves_the_collision_set_are_flagged():
    net, target = _abs_net(), torch.tensor([0.5, 0.5])
    # Both vertices have layer 2's features exactly (|a| = 0.5, b − 1 pushed lower), yet
    # every sample between them has |a| < 0.5: oracle error at the midpoint is 1.
    vertices = torch.tensor([[0.5, 0.2], [-0.5, 0.2]])
    poly = check_polytope(net, "3", vertices, target, target, torch.tensor([1, 1]), method="gradient",
                          criterion=CRITERION)
    assert poly.valid.all() and float(poly.rel_error.max()) == 0.0
    m = measure(net, "3", poly, n_samples=500, seed=0)
    assert m.samples_max_feature_rel_error > 0.5
    assert hull_collides(m.samples_max_feature_rel_error, CRITERION) is False
    assert m.hull_collides is False  # the API's own measurement says so beside its success rate


def test_at_the_first_layer_the_hull_of_colliding_vertices_collides():
    # Layer 1 reads (a, b, −c): at t = (0.5, 0.5, 0.5) any c ≥ 0 collides, and the set is
    # convex there (an affine pre-activation), so the hull's samples collide too.
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.diag(torch.tensor([1.0, 1.0, -1.0])))
        net[0].bias.zero_()
    target = torch.tensor([0.5, 0.5, 0.5])
    vertices = torch.tensor([[0.5, 0.5, 0.9], [0.5, 0.5, 0.7]])
    poly = check_polytope(net, "1", vertices, target, target, torch.tensor([2, 2]), method="gradient",
                          criterion=CRITERION)
    assert poly.valid.all()
    m = measure(net, "1", poly, n_samples=200, seed=0)
    assert m.samples_max_feature_rel_error <= 1e-6
    assert hull_collides(m.samples_max_feature_rel_error, CRITERION) is True
    assert m.hull_collides is True
    assert hull_collides(float("nan"), CRITERION) is None
    lone = check_polytope(net, "1", vertices[:1], target, target, torch.tensor([2]), method="gradient",
                          criterion=CRITERION)
    assert measure(net, "1", lone, n_samples=10, seed=0).hull_collides is None  # no polytope, nothing sampled
