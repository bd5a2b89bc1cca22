"""The exact polytope at the largest input (benchmarks/exact_sizes.py) on a tiny model, so it cannot rot."""

import time
from collections import OrderedDict

import torch
from torch import nn

from benchmarks.common import in_child
from benchmarks.exact_sizes import largest_exact
from benchmarks.report import exact_sizes_section
from collide.piecewise.budget import lp_entries
from collide.solvers.exact import OPTIMAL
from tests.benchmarks import children
from tests.tolerances import LP_STORED_REL_ERROR_F64


def _net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(OrderedDict(
            conv=nn.Conv2d(1, 2, 3), relu1=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(3), flatten=nn.Flatten(),
            fc=nn.Linear(2 * 3 * 3, 8), relu2=nn.ReLU())).eval()


def _photo(side: int) -> torch.Tensor:
    return torch.rand(1, side, side, generator=torch.Generator().manual_seed(side))


def test_the_vertex_is_solved_at_the_largest_side_that_fits_and_reported():
    net = _net()
    budget = lp_entries(net, "relu2", _photo(12))[1]  # 12 px fits exactly; 13 px does not
    assert lp_entries(net, "relu2", _photo(13))[1] > budget
    reported = []
    row = largest_exact(net, "relu2", _photo, max_entries=budget, report=reported.append)
    assert reported == [{"side": 12, "lp_rows": row["lp_rows"], "lp_entries": budget, "input_dim": 144}]
    assert row["side"] == 12 and row["lp_entries"] == budget and row["input_dim"] == 144
    assert row["outcome"] == OPTIMAL and row["max_rel_error_f64"] <= LP_STORED_REL_ERROR_F64
    assert 0 < row["peak_rss_gib_before"] <= row["peak_rss_gib"]
    assert 0 < row["rank_positive"] <= row["n_positive"] <= 8  # fc's 8 units
    text = "\n".join(exact_sizes_section([{"model": "tiny", "layer": "relu2", **row},
                                          {"model": "big", "why": "no side fits 1e+08 entries"},
                                          {"model": "stuck", "layer": "x", "side": 30, "unfinished": "stopped"},
                                          {"model": "point", "layer": "relu2", **row, "rank_positive": 144}]))
    assert "| tiny | `relu2` | 12 px |" in text and "no side fits" in text and "stopped" in text
    assert f"| {row['n_positive']} (rank {row['rank_positive']}) |" in text
    assert f"| {row['n_positive']} (rank 144: the target alone) |" in text  # rank = inputs: a single point


def test_a_layer_no_side_fits_is_said_so():
    row = largest_exact(_net(), "relu2", _photo, max_entries=1)
    assert row["side"] is None and "no side fits" in row["why"]


def test_a_child_reports_in_order_and_one_that_hangs_is_stopped():
    assert in_child(children.reports, (1,), seconds=60) == {"a": 1, "b": 2}
    start = time.monotonic()
    assert in_child(children.hangs, (), seconds=1) == {"unfinished": "stopped after 1 s"}
    assert time.monotonic() - start < 30  # stopped, not waited for
    assert in_child(children.dies, (), seconds=60) == {"a": 1, "unfinished": "died with exit code 3"}
