"""The set-solver benchmark (benchmarks/set_solvers.py) on a tiny model, so it cannot rot:
both solvers measured on one set with region rows, and the same sizes from each."""

import torch

from benchmarks.set_solvers import compare
from collide.piecewise import ball
from tests.support import tiny_conv_net
from tests.tolerances import LP_OBJECTIVE


def test_both_solvers_give_the_same_sizes_and_the_default_is_put_back():
    net = tiny_conv_net()
    target = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1))
    chosen = ball.IPM_REGION_ROWS
    row = compare(net, "relu2", target, reps=1)
    assert ball.IPM_REGION_ROWS == chosen
    assert row["region_rows"] > 0 and row["default"] == "simplex"  # a small set: the simplex's
    assert len(row["simplex"]["seconds"]) == len(row["interior point"]["seconds"]) == 1
    assert row["same_dim"] and row["simplex"]["radius"] > 0
    assert abs(row["simplex"]["radius"] - row["interior point"]["radius"]) <= LP_OBJECTIVE
