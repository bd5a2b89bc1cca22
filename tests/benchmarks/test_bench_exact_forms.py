"""The exact LP's forms benchmark (benchmarks/exact_forms.py) on a tiny model, so it cannot rot."""

import torch

from benchmarks.exact_forms import compare_forms
from benchmarks.report import exact_forms_section, exact_resnet_section
from collide.objective import saturated_units
from collide.taps import preactivation
from tests.support import tiny_conv_net
from tests.tolerances import LP_FORMS_AGREE


def test_both_forms_are_measured_on_one_polytope_and_reported():
    net = tiny_conv_net()
    gen = torch.Generator().manual_seed(1)
    target, init = torch.rand(1, 8, 8, generator=gen), torch.rand(1, 8, 8, generator=gen)
    with torch.no_grad():
        units = saturated_units(preactivation(net, target.unsqueeze(0), "relu2")[0], 2)
    row = compare_forms(net, "relu2", target, init, units)
    assert (row["dense"]["form"], row["layered"]["form"]) == ("dense", "layered")
    assert row["dense"]["optimal"] == row["layered"]["optimal"] == 2
    assert row["max_abs_vertex_diff"] <= LP_FORMS_AGREE
    assert "| tiny | relu2 |" in "\n".join(exact_forms_section({"mnist": [{"model": "tiny", **row}]}))
    lines = exact_resnet_section([
        {"side": 16, "dense_entries": 1e7, "dense_gib": 0.1, "dense_fits": True, "max_abs_vertex_diff": 3e-9,
         "dense": {"solve_seconds": 2.5, "outcome": "optimal", "moved_from_target": 0.75, "peak_rss_gib": 1.25},
         "layered": {"read_seconds": 4.0, "nnz": 2.6e6, "solve_seconds": 45.0, "outcome": "optimal",
                     "moved_from_target": 0.75, "peak_rss_gib": 2.0}},
        {"side": 64, "dense_entries": 1e9, "dense_gib": 63.0, "dense_fits": False,
         "dense": {"skipped": "its rows need 63 GiB"},
         "layered": {"read_seconds": 90.0, "nnz": 7.3e7, "peak_rss_gib_after_read": 5.8,
                     "unfinished": "stopped after 540 s"}}])
    text = "\n".join(lines)
    assert "| 16 px |" in text and "optimal" in text and "| 0.75, 0.75 | 3.0e-09 |" in text
    assert "| 64 px |" in text and "its rows need 63 GiB" in text
    assert "stopped after 540 s; 5.8 GiB after reading" in text
    assert "| -, - | - |" in text  # no vertex at 64 px: nothing moved, no difference
