"""The baselines (collide.comparisons.baselines): random ball, null-space moves, code inversion."""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from collide.comparisons.baselines import (
    BallConfig,
    InversionConfig,
    NullSpaceConfig,
    invert,
    null_space_points,
    random_ball,
)
from collide.errors import ConfigError, DataError, LayerError
from collide.objective import feature_rel_error
from collide.taps import preactivation
from tests.any_models import piecewise_mlp
from tests.tolerances import BALL_DISTANCE, NULL_SPACE_KEEPS, RANK_RTOL

SHAPE = (1, 6, 6)


def small_mlp(seed: int = 0) -> nn.Module:
    """A seeded 36-16-12-3 ReLU MLP on 1x6x6 inputs."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(36, 16), relu1=nn.ReLU(), fc2=nn.Linear(16, 12), relu2=nn.ReLU(),
        fc3=nn.Linear(12, 3)))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return net.eval()


def image(seed: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed))


def digit_like(seed: int) -> torch.Tensor:
    """Half the pixels at 0 or 1, as MNIST's are: a random step clips at once."""
    x = image(seed)
    return torch.where(x < 0.3, 0.0, torch.where(x > 0.8, 1.0, x))


def state(net: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (*net.parameters(), *net.buffers())]


# Random ball ---------------------------------------------------------------------------


def test_random_ball_distances_are_exact_despite_clipping():
    target = digit_like(0)
    wanted = [0.5, 1.5, 2.5]
    ball = random_ball(target, wanted, n=60, seed=1)
    assert ball.points.shape == (60, *SHAPE) and ball.points.dtype == torch.float64
    assert ball.clipped.any()  # the test means something: the box bent these rays
    reached = (ball.points - target.double()).flatten(1).norm(dim=1).numpy()
    np.testing.assert_array_equal(ball.wanted, np.resize(wanted, 60))
    for k in range(60):  # per point, not on a mean
        assert reached[k] == pytest.approx(ball.wanted[k], rel=BALL_DISTANCE), k
        assert ball.reached[k] == pytest.approx(reached[k], rel=BALL_DISTANCE)
    assert float(ball.points.min()) >= 0.0 and float(ball.points.max()) <= 1.0


def test_random_ball_takes_the_largest_step_where_the_box_cannot_reach():
    target = digit_like(2)
    far = 100.0  # more than the diagonal of [0, 1]^36 (6)
    ball = random_ball(target, [far], n=10, seed=0)
    assert (ball.reached < far).all()
    # Every coordinate that moves sits on the box: going further gains nothing.
    moved = (ball.points - target.double()).flatten(1)
    on_box = (ball.points.flatten(1) == 0) | (ball.points.flatten(1) == 1)
    assert bool(on_box[moved != 0].all())


def test_random_ball_is_seeded():
    target = image(3)
    a = random_ball(target, [1.0], n=5, seed=7).points
    assert torch.equal(a, random_ball(target, [1.0], n=5, seed=7).points)
    assert not torch.equal(a, random_ball(target, [1.0], n=5, seed=8).points)


@pytest.mark.parametrize("call, error", [
    (lambda: random_ball(image(0), [1.0], n=0, seed=0), ConfigError),
    (lambda: random_ball(torch.full(SHAPE, float("nan")), [1.0], n=2, seed=0), DataError),
    (lambda: random_ball(image(0) + 2, [1.0], n=2, seed=0), DataError),
    (lambda: random_ball(image(0), [], n=2, seed=0), ConfigError),
    (lambda: random_ball(image(0), [-1.0], n=2, seed=0), ConfigError),
    (lambda: BallConfig(n=0), ConfigError),
])
def test_random_ball_refuses_bad_input(call, error):
    with pytest.raises(error):
        call()


# Null space ----------------------------------------------------------------------------


def test_null_space_moves_keep_the_positive_units_exactly():
    net = small_mlp()
    before = state(net)
    target = image(4, 0.3, 0.7)  # interior: small moves are never clipped
    got = null_space_points(net, "relu1", target, distances=[0.05, 0.1], n=20, seed=0)
    assert not got.clipped.any()
    np.testing.assert_allclose(got.reached, got.wanted, rtol=1e-12)
    net64 = small_mlp().double()
    with torch.no_grad():
        t_pre = preactivation(net64, target.double().unsqueeze(0), "relu1")[0]
    pos = t_pre > 0
    w = net.fc1.weight.detach().double().numpy()[pos.numpy()]
    assert got.null_dim == 36 - np.linalg.matrix_rank(w, tol=RANK_RTOL * np.linalg.norm(w, 2))
    with torch.no_grad():
        pre = preactivation(net64, got.points, "relu1")
    for k in range(len(pre)):
        assert float((pre[k, pos] - t_pre[pos]).abs().max()) <= NULL_SPACE_KEEPS, k
    assert all(torch.equal(a, b) for a, b in zip(before, state(net), strict=True))


def test_null_space_clipping_shortens_the_move_and_stays_in_the_box():
    net = small_mlp()
    target = digit_like(5)
    got = null_space_points(net, "relu1", target, distances=[1.0], n=20, seed=0)
    assert got.clipped.all()
    assert (got.reached <= got.wanted + 1e-12).all() and (got.reached < got.wanted).any()
    assert float(got.points.min()) >= 0.0 and float(got.points.max()) <= 1.0


def test_null_space_refuses_deeper_and_piecewise_layers():
    with pytest.raises(LayerError, match="layer='relu1'"):
        null_space_points(small_mlp(), "relu2", image(0), distances=[1.0], n=2, seed=0)
    model = piecewise_mlp()  # a LeakyReLU and a Hardtanh come before its first ReLU
    with pytest.raises(LayerError, match="affine"):
        null_space_points(model, "6", 0.5 * torch.ones(24), distances=[0.1], n=2, seed=0)


@pytest.mark.parametrize("call, error", [
    (lambda net: null_space_points(net, "relu1", image(0), distances=[1.0], n=0, seed=0), ConfigError),
    (lambda net: null_space_points(net, "relu1", torch.full(SHAPE, float("nan")), distances=[1.0], n=2, seed=0),
     DataError),
    (lambda net: null_space_points(net, "relu1", image(0), distances=[float("inf")], n=2, seed=0), ConfigError),
    (lambda net: NullSpaceConfig(rank_rtol=0.0), ConfigError),
])
def test_null_space_refuses_bad_input(call, error):
    with pytest.raises(error):
        call(small_mlp())


# Inversion -----------------------------------------------------------------------------

FAST = InversionConfig(steps=150, lr=0.02, lr_end=1e-3, tv_weight=1e-4)


def test_inversion_lowers_the_feature_error_and_leaves_the_model_alone():
    net = small_mlp()
    net.train()
    before = state(net)
    target, init = image(6), image(7)
    got = invert(net, "relu2", target, init, config=FAST)
    assert got.rel_error < 0.5 * got.init_rel_error
    assert len(got.history) == FAST.steps and got.history[-1] < got.history[0]
    assert got.point.shape == SHAPE and float(got.point.min()) >= 0 and float(got.point.max()) <= 1
    with torch.no_grad():
        net64 = small_mlp().double()
        recheck = feature_rel_error(preactivation(net64, got.point.double().unsqueeze(0), "relu2"),
                                    preactivation(net64, target.double().unsqueeze(0), "relu2"))
    assert float(recheck[0]) == pytest.approx(got.rel_error, rel=1e-12)
    assert net.training and all(torch.equal(a, b) for a, b in zip(before, state(net), strict=True))
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in net.modules())


def test_inversion_is_deterministic_for_a_seed():
    net, target, init = small_mlp(), image(6), image(7)
    noisy = InversionConfig(steps=20, init_noise=0.1, seed=3)
    a = invert(net, "relu1", target, init, config=noisy).point
    assert torch.equal(a, invert(net, "relu1", target, init, config=noisy).point)
    other = InversionConfig(steps=20, init_noise=0.1, seed=4)
    assert not torch.equal(a, invert(net, "relu1", target, init, config=other).point)


@pytest.mark.parametrize("call, error", [
    (lambda net: invert(net, "relu1", torch.full(SHAPE, float("nan")), image(0), config=FAST), DataError),
    (lambda net: invert(net, "relu1", image(0), torch.rand(1, 5, 5), config=FAST), DataError),
    (lambda net: invert(net, "relu9", image(0), image(1), config=FAST), LayerError),
    (lambda net: invert(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), "1", torch.rand(4), torch.rand(4),
                        config=FAST), ConfigError),  # a TV prior on inputs that are no image
    (lambda net: InversionConfig(steps=0), ConfigError),
    (lambda net: InversionConfig(lower=1.0, upper=0.0), ConfigError),
])
def test_inversion_refuses_bad_input(call, error):
    with pytest.raises(error):
        call(small_mlp())


# The experiment --------------------------------------------------------------------------


def tiny_baselines(data_root, root, **changes):
    from collide.config import GeometryConfig, SampleConfig, TrainConfig
    from collide.experiments.configs.baselines import BaselinesExperiment, HullConfig

    settings = dict(
        data_root=str(data_root), checkpoint_dir=str(root / "checkpoints"), results_root=str(root / "results"),
        device="cpu", allow_download=False, train=TrainConfig(epochs=2, min_accuracy=0.0),
        sample=SampleConfig(n_samples=300, n_dataset_pairs=200), hull=HullConfig(n=40),
        geometry=GeometryConfig(n_samples=10, chains=2, burn_in=10, thin=2, n_directions=2), ball=BallConfig(n=40),
        null_space=NullSpaceConfig(n=40), inversion=InversionConfig(steps=20),
    )
    return BaselinesExperiment(**{**settings, **changes})


def test_baselines_experiment_writes_every_row_side_by_side(tiny_mnist, tmp_path):
    import pandas as pd

    from collide.experiments import baselines
    from collide.experiments.engine import run

    config = tiny_baselines(tiny_mnist, tmp_path)
    out = run(baselines, config=config)
    table = pd.read_parquet(out["table"]).set_index("row")
    assert list(table["method"]) == ["gradient-hull", "exact-region", "random-ball", "null-space", "null-space",
                                     "inversion"]
    assert list(table["layer"]) == ["relu1"] * 4 + ["relu2", "relu1"]
    assert table.loc[0, "claim_met"] and table.loc[1, "claim_met"]  # the hull and the exact set collide
    assert table.loc[3, "mean_distance_to_target"] == table.loc[4, "mean_distance_to_target"]  # the same points
    assert list(table["n_samples"]) == [40, 10, 40, 40, 40, 1]
    assert table.loc[2, "vertex_distance_mean"] == pytest.approx(table.loc[2, "mean_distance_to_target"], rel=1e-6)
    assert Path(out["baselines_figure"]).is_file()
    assert run(baselines, config=config)["reused_rows"] == 6


def test_baselines_experiment_refuses_a_deeper_layer_and_unknown_methods(tiny_mnist, tmp_path):
    from collide.experiments import baselines

    with pytest.raises(ConfigError, match="first ReLU"):
        baselines.validate(config=tiny_baselines(tiny_mnist, tmp_path, layer="relu2"))
    with pytest.raises(ConfigError, match="expected methods"):
        tiny_baselines(tiny_mnist, tmp_path, methods=("random-ball", "warp"))
    with pytest.raises(ConfigError, match="gradient-hull"):
        tiny_baselines(tiny_mnist, tmp_path, methods=("random-ball",))
    assert baselines.Config.from_dict({"inversion": {"steps": 5}}).inversion.steps == 5
