import pytest
import torch
from torch import nn

from collide.errors import DataError
from collide.polytope import (
    avg_pairwise_distance,
    combine,
    dataset_avg_distance,
    dataset_distance,
    evaluate,
    sample_weights,
)
from tests.tolerances import MC_MEAN, MEAN_SAMPLES, RECHECK, UNCHANGED


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


def test_the_dataset_distance_is_the_mean_over_all_pairs_block_by_block(monkeypatch):
    """Exact over all pairs (issue "Sizes you can trust" §7: 2,000 random pairs gave MNIST 10.23, all
    pairs 10.18), in blocks far smaller than the set, against torch.pdist over the whole set."""
    import collide.polytope as polytope

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(203, 1, 7, 9, generator=gen)  # [0, 1] pixels like MNIST's
    images[7] = images[3]  # a duplicate pair: distance 0, where the Gram formula can go negative
    brute = float(torch.pdist(images.flatten(1).double()).mean())
    monkeypatch.setattr(polytope, "_BLOCK_ELEMENTS", 5 * 203)  # 5 rows a block: 41 blocks, a ragged last
    got = dataset_distance(images, n_pairs=10, seed=0)
    assert got.exact and got.stderr == 0.0 and got.n_pairs == 203 * 202 // 2
    assert abs(got.mean - brute) <= RECHECK * brute
    assert dataset_avg_distance(images, n_pairs=10, seed=0) == got.mean  # n_pairs is unused below the cap
    # past the cap: seeded random pairs, with a standard error that covers the exact mean
    sampled = dataset_distance(images, n_pairs=4000, seed=1, max_exact_images=100)
    assert not sampled.exact and sampled.n_pairs == 4000 and sampled.stderr > 0
    assert abs(sampled.mean - brute) <= 4 * sampled.stderr
    assert sampled == dataset_distance(images, n_pairs=4000, seed=1, max_exact_images=100)


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
