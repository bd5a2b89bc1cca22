import pytest
import torch
from torch import nn

from collide.errors import DataError
from collide.polytope import (
    avg_pairwise_distance,
    combine,
    dataset_avg_distance,
    evaluate,
    sample_weights,
)
from tests.tolerances import MC_MEAN, MEAN_SAMPLES, UNCHANGED


@pytest.mark.parametrize("sampler", ["stick", "dirichlet"])
def test_weights_lie_on_the_simplex(sampler):
    w = sample_weights(2000, 5, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert w.shape == (2000, 5)
    assert (w >= 0).all()
    assert torch.allclose(w.sum(1), torch.ones(2000, dtype=w.dtype), atol=UNCHANGED)


def test_stick_breaking_means_halve():
    w = sample_weights(MEAN_SAMPLES, 5, sampler="stick", generator=torch.Generator().manual_seed(1))
    expected = torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 16], dtype=w.dtype)
    assert torch.allclose(w.mean(0), expected, atol=MC_MEAN)


def test_dirichlet_means_are_uniform():
    w = sample_weights(MEAN_SAMPLES, 4, sampler="dirichlet", generator=torch.Generator().manual_seed(1))
    assert torch.allclose(w.mean(0), torch.full((4,), 0.25, dtype=w.dtype), atol=MC_MEAN)


def test_same_seed_same_weights_other_seed_other_weights():
    def draw(seed):
        return sample_weights(10, 5, sampler="stick", generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_combine_is_the_weighted_sum():
    vertices = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    out = combine(w, vertices)
    assert torch.equal(out[0], vertices[0])
    assert torch.allclose(out[1], 0.2 * vertices[0] + 0.3 * vertices[1] + 0.5 * vertices[2], atol=UNCHANGED)
    with pytest.raises(DataError, match="3 vertices"):
        combine(w[:, :2], vertices)


def test_distances_against_brute_force():
    pts = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
    brute = sum((pts[i] - pts[j]).norm() for i in range(4) for j in range(i + 1, 4)) / 6
    assert avg_pairwise_distance(pts) == pytest.approx(float(brute), abs=UNCHANGED)
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert dataset_avg_distance(two, n_pairs=50, seed=0) == pytest.approx(5.0)


def test_evaluate_counts_the_target_class():
    # A linear "classifier" whose class is the sign of the first coordinate.
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[10.0, 0.0], [-10.0, 0.0]]))
    samples = torch.tensor([[1.0, 0.0], [2.0, 5.0], [-1.0, 0.0], [0.5, 0.0]])
    ev = evaluate(model, samples, torch.tensor([3.0, 0.0]))
    assert ev.target_class == 0
    assert ev.success_rate == pytest.approx(0.75)
    assert ev.sample_pred.tolist() == [0, 0, 1, 0]
    with pytest.raises(DataError, match="NaN"):
        evaluate(model, samples * float("nan"), torch.tensor([3.0, 0.0]))


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_leaves_the_model_as_it_was(training):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 3))
    model.train(training)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    samples = torch.rand(6, 2, generator=torch.Generator().manual_seed(1))
    first = evaluate(model, samples, samples[0], batch_size=4)
    second = evaluate(model, samples, samples[0], batch_size=4)
    assert [m.training for m in model.modules()] == [training] * 5
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(first.sample_prob, second.sample_prob)  # eval mode inside: no dropout


@pytest.mark.gpu
def test_evaluate_on_another_device_leaves_the_model_where_it_is():
    model = nn.Linear(2, 2)
    samples = torch.rand(4, 2, generator=torch.Generator().manual_seed(0))
    on_gpu = evaluate(model, samples, samples[0], device="cuda")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert on_gpu.success_rate == evaluate(model, samples, samples[0]).success_rate
