"""Many targets per solver batch (collide.find_polytopes): the same polytopes as one
target at a time, the same bits for the same batches."""

import pytest
import torch

from collide import ExactConfig, GradientConfig, find_polytope, find_polytopes
from collide.errors import DataError
from tests.tolerances import EQUIVALENT

CONFIG = GradientConfig(max_steps=120)


def _targets(n: int, seed: int = 21) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 28, 28, generator=gen) * 0.6 for _ in range(n)]


def test_a_batch_of_targets_is_deterministic_and_each_polytope_its_own(mlp_model):
    targets = _targets(3)
    inits = [targets[1], None, targets[0]]
    a = find_polytopes(mlp_model, "relu1", targets, inits=inits, n_vertices=3, config=CONFIG)
    b = find_polytopes(mlp_model, "relu1", targets, inits=inits, n_vertices=3, config=CONFIG)
    assert len(a) == 3
    for pa, pb, target, init in zip(a, b, targets, inits, strict=True):
        assert torch.equal(pa.vertices, pb.vertices)  # the same batch, the same bits
        assert torch.equal(pa.target, target) and torch.equal(pa.init, target if init is None else init)
        assert pa.solver["batch_targets"] == 3 and len(pa.solver["steps"]) == 3
        assert pa.solver["seconds"] * 3 == pytest.approx(pa.solver["batch_seconds"])
        alone = find_polytope(mlp_model, "relu1", target, init=init, n_vertices=3, config=CONFIG)
        assert torch.equal(pa.units, alone.units)
        # Each vertex follows its own path (per-row loss, per-element Adam, per-row stop);
        # only a batched product's rounding may differ.
        assert torch.equal(pa.valid, alone.valid)
        assert (pa.vertices - alone.vertices).abs().max() <= EQUIVALENT


def test_a_batch_of_one_is_find_polytope(mlp_model):
    [target] = _targets(1, seed=5)
    [batched] = find_polytopes(mlp_model, "relu1", [target], n_vertices=2, config=CONFIG)
    alone = find_polytope(mlp_model, "relu1", target, n_vertices=2, config=CONFIG)
    assert torch.equal(batched.vertices, alone.vertices) and "batch_targets" not in batched.solver


def test_exact_polytopes_of_a_batch_are_those_of_each_target(mlp_model):
    targets = _targets(2, seed=8)
    batched = find_polytopes(mlp_model, "relu1", targets, n_vertices=2, method="exact", config=ExactConfig())
    for poly, target in zip(batched, targets, strict=True):
        alone = find_polytope(mlp_model, "relu1", target, n_vertices=2, method="exact", config=ExactConfig())
        assert torch.equal(poly.vertices, alone.vertices) and poly.n_valid == 2


def test_bad_batches_are_refused(mlp_model):
    with pytest.raises(DataError, match="at least one target"):
        find_polytopes(mlp_model, "relu1", [])
    with pytest.raises(DataError, match="one init per target"):
        find_polytopes(mlp_model, "relu1", _targets(2), inits=[None])
    bad = _targets(2)
    bad[1] = bad[1] * float("nan")
    with pytest.raises(DataError, match="NaN"):
        find_polytopes(mlp_model, "relu1", bad)
