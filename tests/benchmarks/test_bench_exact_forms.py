"""The exact LP's forms benchmark (benchmarks/exact_forms.py) on a tiny model, so it cannot rot."""

from collections import OrderedDict

import torch
from torch import nn

from benchmarks.exact_forms import compare_forms
from benchmarks.report import exact_forms_section
from collide.objective import saturated_units
from collide.taps import preactivation
from tests.tolerances import LP_FORMS_AGREE


def test_both_forms_are_measured_on_one_polytope_and_reported():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(1, 2, 3), relu1=nn.ReLU(), pool=nn.MaxPool2d(2), flatten=nn.Flatten(),
            fc=nn.Linear(2 * 3 * 3, 8), relu2=nn.ReLU())).eval()
    gen = torch.Generator().manual_seed(1)
    target, init = torch.rand(1, 8, 8, generator=gen), torch.rand(1, 8, 8, generator=gen)
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), "relu2")[0], 2)
    row = compare_forms(net, "relu2", target, init, units)
    assert (row["dense"]["form"], row["layered"]["form"]) == ("dense", "layered")
    assert row["dense"]["optimal"] == row["layered"]["optimal"] == 2
    assert row["max_abs_vertex_diff"] <= LP_FORMS_AGREE
    lines = exact_forms_section({"mnist": [{"model": "tiny", **row}], "resnet18": [
        {"side": 64, "dense_entries": 1e9, "dense_gib": 7.5, "dense_fits": False, "unfinished": "stopped"}]})
    text = "\n".join(lines)
    assert "| tiny | relu2 |" in text and "| 64 px |" in text and "stopped" in text
