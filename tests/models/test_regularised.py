"""Training with a penalty on the collision layer's weights: the plain loop at strength 0,
the cosine penalty against numpy, and a penalty that does what it says."""

import numpy as np
import pytest
import torch

from collide.config import TrainConfig
from collide.datasets.mnist import Split
from collide.errors import ConfigError
from collide.models.regularised import cosine_penalty, train_regularised
from collide.models.zoo import train
from tests.tolerances import UNCHANGED

CONFIG = TrainConfig(epochs=1, batch_size=32, min_accuracy=0.0)


def _split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    return Split(torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def test_the_cosine_penalty_is_the_mean_squared_positive_cosine_of_distinct_rows():
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    rows = w.numpy().astype(np.float64)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cos = unit @ unit.T
    expected = np.mean([max(cos[i, j], 0.0) ** 2 for i in range(7) for j in range(7) if i != j])
    assert float(cosine_penalty(w)) == pytest.approx(expected, abs=UNCHANGED)
    assert float(cosine_penalty(torch.ones(3, 4))) == pytest.approx(1.0, abs=UNCHANGED)  # parallel rows
    assert float(cosine_penalty(torch.eye(4))) == 0.0  # orthogonal rows


@pytest.mark.parametrize("penalty", ["none", "cosine", "weight-decay"])
def test_at_strength_zero_it_trains_zoo_trains_weights_bit_for_bit(penalty):
    data, test = _split(96, 0), _split(32, 1)
    plain, _ = train(data, test, config=CONFIG)
    ours, meta = train_regularised(data, test, config=CONFIG, penalty=penalty, strength=0.0, module="fc1")
    for (name, a), b in zip(plain.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert meta["penalty"] == penalty and meta["penalty_module"] == "fc1"


def test_a_strong_cosine_penalty_spreads_the_rows_and_weight_decay_shrinks_them():
    data, test = _split(256, 2), _split(32, 3)
    config = TrainConfig(epochs=2, batch_size=32, min_accuracy=0.0)
    plain, plain_meta = train_regularised(data, test, config=config, penalty="none", strength=0.0, module="fc1")
    spread, meta = train_regularised(data, test, config=config, penalty="cosine", strength=100.0, module="fc1")
    decayed, _ = train_regularised(data, test, config=config, penalty="weight-decay", strength=1.0, module="fc1")
    assert meta["cosine_penalty"] < 0.5 * plain_meta["cosine_penalty"]
    assert float(cosine_penalty(spread.fc1.weight.detach())) == pytest.approx(meta["cosine_penalty"], abs=UNCHANGED)
    assert decayed.fc1.weight.norm() < plain.fc1.weight.norm()


def test_unknown_penalties_and_modules_are_refused_by_name():
    data = _split(8, 0)
    with pytest.raises(ConfigError, match="unknown penalty 'l1'"):
        train_regularised(data, data, config=CONFIG, penalty="l1", strength=1.0, module="fc1")
    with pytest.raises(ConfigError, match="no weighted module 'relu1'"):
        train_regularised(data, data, config=CONFIG, penalty="cosine", strength=1.0, module="relu1")
