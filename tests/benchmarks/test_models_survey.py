"""The torchvision survey's row of one model, on a small model whose call sites are known:
the counts are the hand-written listing's, the polytope's feature error a manual forward
pass's, the native-only side the one the budget admits."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks import models as survey
from collide.sites import probe

# The survey's feature error recomputed in float64 here: the solver's own check runs in
# float64 too, so they agree up to the last bits of a float32 vertex's forward pass.
SAME_ERROR = 1e-6


class Mixed(nn.Module):
    """A GELU module, a functional sigmoid gate, a ReLU module called twice, a Hardswish:
    five activation calls of four activations, one reused module, one function."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.gelu = nn.GELU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.hswish = nn.Hardswish()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Up to the first ReLU call's input: the survey's middle site."""
        x = self.gelu(self.conv1(x))
        x = x * torch.sigmoid(x)
        return self.conv2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.trunk(x))
        x = self.relu(self.conv3(x))
        return self.fc(self.hswish(x).flatten(1))


def _mixed() -> Mixed:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Mixed().eval()


def test_the_sites_are_counted_by_activation_method_and_kind():
    model, image = _mixed(), torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    sites = probe(model, image[None])
    row = survey.sites_summary(sites)
    # Oracle: the listing written out above.
    assert row["sites"] == row["addressable"] == 5
    assert row["kinds"] == {"GELU": 1, "sigmoid": 1, "ReLU": 2, "Hardswish": 1}
    assert row["by_method"]["gradient"] == row["by_method"]["paper"] == 5
    assert row["by_method"]["exact"] == 3  # the two ReLU calls and Hardswish (flat below -3); GELU, sigmoid are smooth
    assert (row["modules"], row["functional"], row["reused"]) == (4, 1, 1)
    assert row["refused"] == []
    middle = survey.middle_site(sites)
    assert middle is not None and middle.base == "relu" and middle.call == 0


def test_a_row_reports_the_polytope_at_the_middle_site_with_its_feature_error():
    model, image = _mixed(), torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    row = survey.survey_model(model, image, name="mixed")
    assert row["layer"] == survey.middle_site(probe(model, image[None])).name and row["layer_op"] == "ReLU"
    assert "exact" in row["layer_methods"] and "exact_feasible" in row  # a ReLU site: the LP's size is reported
    assert 0 <= row["valid"] <= survey.VERTICES and row["steps"] >= 1 and row["seconds"] > 0
    # Oracle: the vertices' features by a manual forward pass, in float64, against the row's error.
    import collide

    poly = collide.find_polytope(model, row["layer"], image, n_vertices=survey.VERTICES, method="gradient")
    double = _mixed().double()
    with torch.no_grad():
        post = torch.relu(double.trunk(poly.vertices.double())).flatten(1)
        ref = torch.relu(double.trunk(image[None].double())).flatten(1)
    errors = (post - ref).norm(dim=1) / ref.norm(dim=1)
    assert abs(row["max_rel_error"] - float(errors.max())) <= SAME_ERROR
    assert row["valid"] == int(poly.valid.sum())


def test_a_native_only_model_is_built_at_the_largest_side_the_budget_admits(monkeypatch):
    """Step times faked (no transformer is built): the first side whose worst case fits wins,
    the native side's time is kept, and with none fitting the smallest side is used."""
    built = []
    monkeypatch.setattr(survey, "build", lambda name, side: built.append(side) or side)
    steps = survey.GradientConfig().max_steps
    fake = {224: 10 * survey.BUDGET_S / steps, 160: 2 * survey.BUDGET_S / steps, 128: 0.5 * survey.BUDGET_S / steps}
    monkeypatch.setattr(survey, "step_seconds", lambda side, _image: fake.get(side, 0.0))
    fit = survey.fitting_side("vit_b_16", lambda side: torch.zeros(3, side, side))
    assert fit["side"] == 128 and built == [224, 160, 128]
    assert fit["native_side"] == 224 and fit["native_worst_case_seconds"] == fake[224] * steps
    monkeypatch.setattr(survey, "step_seconds", lambda side, _image: 10 * survey.BUDGET_S / steps)
    assert survey.fitting_side("vit_b_16", lambda side: torch.zeros(3, side, side))["side"] == min(survey.LADDER)


def test_update_replaces_the_surveyed_rows_in_place_and_keeps_the_others(monkeypatch, tmp_path):
    """Rows faked (no model is built): each one written as soon as it is measured, an old row
    replaced where it stood, a new one appended, every other row and item kept."""
    import json

    results = tmp_path / "results.json"
    old = [{"model": "torchvision:a", "sites": 1}, {"model": "torchvision:b", "sites": 2}]
    results.write_text(json.dumps({"machine": {"date": "then"}, "solver": [1], "models": {"side": 64, "rows": old,
                                                                                           "torch_threads": 2}}))
    seen = []

    def fake_run(names, *, max_steps, budget_s, each):
        for name in names:
            each({"model": f"torchvision:{name}", "sites": 9, "max_steps": max_steps})
            seen.append(json.loads(results.read_text())["models"]["rows"])  # written after each
        return {}

    monkeypatch.setattr(survey, "run", fake_run)
    monkeypatch.setattr("benchmarks.report.markdown", lambda data: "md")
    survey.update(("a", "c"), results, max_steps=7)
    data = json.loads(results.read_text())
    assert [r["model"] for r in data["models"]["rows"]] == ["torchvision:a", "torchvision:b", "torchvision:c"]
    assert [r["sites"] for r in data["models"]["rows"]] == [9, 2, 9] and data["solver"] == [1]
    assert len(seen[0]) == 2 and seen[0][0]["max_steps"] == 7
    assert (tmp_path / "results.md").read_text() == "md"


def test_without_saturated_units_at_the_middle_site_the_polytope_goes_to_the_nearest_site_that_has_them(
        monkeypatch):
    """Counts and solver faked: the tightest tolerance that gives any site five wins, then
    the site nearest the middle; with none, the row says why and solves nothing."""
    from types import SimpleNamespace

    model, image = _mixed(), torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    counts = {"gelu": (0, 9, 99), "sigmoid()": (0, 0, 50), "relu#0": (0, 0, 0), "relu#1": (0, 0, 0),
              "hswish": (0, 0, 7)}
    monkeypatch.setattr(survey, "saturated_at", lambda _m, site, _i: dict(zip(map(repr, survey.SURVEY_TOLS),
                                                                              counts[site.name], strict=True)))
    solved = []

    def fake_find(_model, layer, _image, *, config, **_):
        solved.append((layer, config.saturation_tol))
        return SimpleNamespace(n_valid=5, solver={"steps": [1]}, rel_error=torch.zeros(5), reasons=[""] * 5)

    monkeypatch.setattr(survey.collide, "find_polytope", fake_find)
    row = survey.survey_model(model, image, name="mixed")
    assert row["layer"] == "relu#0" and row["saturated"] == {repr(t): 0 for t in survey.SURVEY_TOLS}
    assert solved == [("gelu", 0.03)] and row["polytope_layer"] == "gelu" and row["polytope_saturated"] == 9
    counts.update(gelu=(0, 0, 0), hswish=(0, 0, 0), **{"sigmoid()": (0, 0, 0)})
    row = survey.survey_model(model, image, name="mixed")
    assert "why_no_polytope" in row and len(solved) == 1
