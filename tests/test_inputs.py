"""collide.inputs: the one input validator, against inputs whose faults are known."""

import numpy as np
import pytest
import torch
from torch import nn

from collide.errors import ConfigError, DataError
from collide.inputs import BOX_SLACK, one_input, require_finite, require_float32, require_in_box


def test_a_finite_input_passes_and_a_fault_is_counted_with_its_fix():
    require_finite(torch.zeros(3), "x")
    require_finite(np.zeros((2, 2)), "x")
    with pytest.raises(DataError, match=r"^the images holds 2 NaN or infinite values of 4: fetch them again$"):
        require_finite(np.array([0.0, np.nan, np.inf, 1.0]), "the images", fix="fetch them again")
    with pytest.raises(ValueError, match="1 NaN or infinite values of 3"):
        require_finite(torch.tensor([0.0, -float("inf"), 1.0]), "x", error=ValueError)


def test_the_box_allows_rounding_and_names_the_range_it_missed():
    require_in_box(torch.tensor([-BOX_SLACK / 2, 1 + BOX_SLACK / 2]), "x", 0.0, 1.0)
    box = r"outside the valid input range \(the input box \[0.0, 1.0\]; min -0.5, max 1\): scale it"
    with pytest.raises(DataError, match=box):
        require_in_box(torch.tensor([-0.5, 1.0]), "x", 0.0, 1.0, fix="scale it")
    with pytest.raises(DataError, match="NaN"):
        require_in_box(torch.tensor([float("nan")]), "x", 0.0, 1.0)


def test_one_input_and_the_model_dtype():
    assert one_input(torch.ones(2, dtype=torch.float64), "x").dtype == torch.float32
    with pytest.raises(DataError, match="must be a torch.Tensor, got list"):
        one_input([1.0], "x")
    with pytest.raises(DataError, match="without a batch dimension, got shape"):
        one_input(torch.tensor(1.0), "x")
    require_float32(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="torch.float64.*model.float"):
        require_float32(nn.Linear(2, 2).double())
