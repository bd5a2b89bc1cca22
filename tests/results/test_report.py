"""What a reader sees: the figure, the report, the paper's rows and `collide status`, on
small synthetic stores (no model, no solver)."""

import html
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from collide.results import cells, figures, health, reference, report, tables, vertex_figure
from collide.results.store import ExperimentStore
from flows.cli import main
from tests.support import PROJECT

V = 5
REASON = "1 of 5 vertices valid: success needs >= 2"


def _metrics(row: int, **changes):
    base = {
        "experiment": "mnist", "row": row, "method": "gradient", "model": "mnist-mlp", "layer": "relu1",
        "n_vertices": V, "n_samples": 2000, "success_rate": 1.0, "target_top_prob": 0.99996,
        "samples_top_prob": 0.99991, "dataset_avg_distance": 10.3, "vertex_avg_distance": 1.41,
        "max_feature_rel_error": 4e-3, "init": "target", "valid_vertices": V, "converged": True,
        "criterion": "rel<=0.01, nonpos<=0.01", "invalid_reason": "", "flags": "", "random_weights": False,
        "max_feature_rel_error_all": 4e-3, "pixel_scale": 1.0,
    }
    return {**base, **changes}


def _write(root, experiment, row, metrics, *, valid=None, attrs=None):
    rng = np.random.default_rng(row)
    arrays = {"vertices": rng.random((V, 1, 28, 28), dtype=np.float32),
              "target": rng.random((1, 28, 28), dtype=np.float32),
              "init": np.zeros((1, 28, 28), np.float32)}
    if valid is not None:
        arrays["vertex_valid"] = np.asarray(valid)
    ExperimentStore(root, experiment).write_row(row, arrays, {
        "method": metrics["method"], "init": metrics.get("init"), "layer": metrics["layer"],
        "model": metrics["model"], "model_source": {"random": bool(metrics.get("random_weights"))},
        "config_digest": "abc", "metrics": metrics, **(attrs or {}),
    })


@pytest.fixture
def root(tmp_path):
    """mnist: a fine row, a row with 1 valid vertex (no success rate), a random-weights row;
    old: an ImageNet store from before vertex validity, distances on 0-255 pixels."""
    root = tmp_path / "results"
    _write(root, "mnist", 0, _metrics(0), valid=[True] * V)
    _write(root, "mnist", 1, _metrics(1, method="exact", init="other", valid_vertices=1, converged=None,
                                      success_rate=None, invalid_reason=REASON, vertex_avg_distance=None,
                                      max_feature_rel_error_all=0.3),
           valid=[True, False, False, False, False])
    _write(root, "mnist", 2, _metrics(2, init="other", flags="random-weights", random_weights=True,
                                      target_top_prob=0.1031, samples_top_prob=0.1029), valid=[True] * V)
    old = {k: v for k, v in _metrics(0).items()
           if k not in ("valid_vertices", "converged", "criterion", "invalid_reason", "flags",
                        "max_feature_rel_error_all")}
    old.update(experiment="old", model="vgg16-imagenet", layer="fc6", init="other", pixel_scale=255.0,
               dataset_avg_distance=37000.0, vertex_avg_distance=5000.0)
    _write(root, "old", 0, old)
    tables.regenerate(root)
    return root


def test_probabilities_are_told_apart_from_one():
    assert cells.format_probability(0.99996) == "0.999960"
    assert cells.format_probability(0.99999996) == "1 - 4.0e-08"
    assert cells.format_probability(1.0) == "1"
    assert cells.format_probability(float("nan")) == cells.format_probability(None) == "n/a"


def test_the_figure_has_an_init_column_and_frames_invalid_vertices():
    rng = np.random.default_rng(0)
    init = np.full((1, 8, 8), 0.25, np.float32)
    fig = figures.draw_vertex_grid(
        [rng.random((1, 8, 8))] * 2, [init, init], [rng.random((3, 1, 8, 8))] * 2, ["a", "b"],
        valid=[np.array([True, False, True]), None],
    )
    assert figures.column_titles(3) == ["target", "init", "vertex 0", "vertex 1", "vertex 2"]
    axes = np.array(fig.axes).reshape(2, 5)
    assert [ax.get_title() for ax in axes[0]] == figures.column_titles(3)
    np.testing.assert_array_equal(axes[0][1].images[0].get_array(), init[0])
    invalid = axes[0][3]
    assert invalid.get_xlabel() == "invalid" and invalid.images  # still drawn
    assert invalid.spines["top"].get_edgecolor()[:3] == pytest.approx((0.839, 0.153, 0.157), abs=1e-2)
    assert all(ax.get_xlabel() == "" for ax in (*axes[0][[2, 4]], *axes[1]))


def test_the_figure_rows_say_init_validity_success_and_flags(root, monkeypatch):
    seen = {}

    def capture(targets, inits, vertices, labels, path, **kw):
        seen.update(inits=inits, labels=labels, **kw)
        return path

    monkeypatch.setattr(vertex_figure, "vertex_grid", capture)
    vertex_figure.write_figure(ExperimentStore(root, "mnist"), [0, 1, 2])
    labels = [" ".join(label.split()) for label in seen["labels"]]
    assert "init=target" in labels[0] and "valid 5/5, success rate 1" in labels[0]
    assert "paper Table 2 row 1: 100%, dist 1.33" in labels[0]
    assert "dist 1.41 (10 pairs)" in labels[0]  # a spread says how many vertex pairs it rests on
    assert "valid 1/5: no success rate" in labels[1]
    assert "success rate 1 [random weights]" in labels[2]
    assert "RANDOM WEIGHTS (row 2)" in seen["title"] and "red frame: invalid vertex" in seen["title"]
    assert [v.tolist() for v in seen["valid"]][1] == [True, False, False, False, False]
    assert all(i is not None for i in seen["inits"])


def _inside(fig, text) -> bool:
    box = text.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= 0 and box.x1 <= fig.bbox.x1


def test_a_long_title_is_wrapped_to_the_figure_and_a_small_gallery_is_as_wide_as_its_images():
    """A new user's trial: a title naming four flagged rows ran off the figure's right edge,
    and a gallery of 2 images drew them in a grid of 8 columns, captions over each other."""
    long = "mnist: polytopes colliding with the target at relu1" + " - RANDOM WEIGHTS (rows 0, 1, 2, 3)" * 3
    fig = figures.draw_vertex_grid([np.zeros((1, 4, 4))], [None], [np.ones((2, 1, 4, 4))], ["r"], title=long)
    fig.canvas.draw()
    assert _inside(fig, fig._suptitle) and "\n" in fig._suptitle.get_text()
    ranked = pd.DataFrame({"rank": [1, 2], "label": [0, 9], "prediction": [0, 9], "rank_by": "radius",
                           "size": [0.5, 0.1]})
    gallery = figures.draw_gallery(np.zeros((2, 1, 4, 4)), ranked, title="scan: the 1 most (top) and least "
                                   "(bottom) blind test examples by radius", columns=1)
    gallery.canvas.draw()
    assert _inside(gallery, gallery._suptitle)
    tops = sorted(ax.get_position().y0 for ax in gallery.axes)
    assert len(gallery.axes) == 2 and tops[0] < tops[1]  # one above the other: top and bottom
    wide = figures.draw_gallery(np.zeros((2, 1, 4, 4)), ranked)  # 8 columns asked, 2 images
    assert all(ax.get_position().width > 0.3 for ax in wide.axes)


def test_drawing_leaves_the_callers_matplotlib_alone(tmp_path):
    code = (
        "import sys, matplotlib; matplotlib.use('svg');"
        "import numpy as np; from collide.results import figures;"
        f"figures.vertex_grid([np.zeros((1, 4, 4))], [None], [np.ones((2, 1, 4, 4))], ['r'], r'{tmp_path}/f.png');"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend();"
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_paper_rows_match_only_the_papers_settings_in_input_units():
    mlp = {"model": "mnist-mlp", "layer": "relu1", "method": "exact"}
    assert reference.reference_for({**mlp, "init": "target"}).vertex_avg_distance == 1.33
    assert reference.reference_for({**mlp, "init": "other"}).vertex_avg_distance == 1.28
    assert reference.reference_for({**mlp, "layer": "relu2", "init": "other"}) is None
    assert reference.reference_for({**mlp, "model": "mnist-lenet5", "init": "other"}) is None
    # A scan's most blind example, a 0, and the frontier's points are nothing Table 2 measured.
    assert reference.reference_for({**mlp, "init": "target", "target_class": 7}).vertex_avg_distance == 1.33
    assert reference.reference_for({**mlp, "init": "target", "target_class": 0}) is None
    assert reference.reference_for({**mlp, "init": "target", "target_class": 7, "scan_rank_by": "radius"}) is None
    assert reference.reference_for({**mlp, "method": "frontier", "init": "other", "n_vertices": 0}) is None
    vgg = {"model": "vgg16-imagenet", "layer": "fc6", "method": "gradient", "init": "other"}
    table4 = reference.reference_for(vgg)
    assert table4.table == "Table 4" and table4.vertex_avg_distance == pytest.approx(4906.56 / 255)
    assert table4.dataset_avg_distance == pytest.approx(37538.22 / 255)
    assert reference.reference_for({**vgg, "model": "vgg16-random"}) is None
    assert reference.reference_for({**vgg, "flags": "random-weights"}) is None
    patches = {**vgg, "method": "patches", "init": "start-composition", "init_index": 3}
    assert reference.reference_for({**patches, "target_index": 3}) == reference.TABLE_6[0]
    other = reference.reference_for({**patches, "target_index": 9})
    assert other == reference.TABLE_6[1] and other.vertex_avg_distance == pytest.approx(9587.92 / 255)


def test_the_summary_gives_each_methods_largest_error_beside_its_own_bound():
    """A vertex is valid by its own method's criterion: one maximum over methods would be
    the loosest method's (the paper's rel<=0.5) and pass for the exact rows' too."""
    frame = pd.DataFrame({
        "method": ["gradient", "exact", "paper", "exact"], "success_rate": [1.0, 1.0, 1.0, float("nan")],
        "max_feature_rel_error": [9.9e-3, 9.7e-9, 0.23, float("nan")],
        "criterion": ["rel<=0.01, nonpos<=0.01", "rel<=1e-06, outcome=optimal", "rel<=0.5, push>=0.01*max|t|",
                      "rel<=1e-06, outcome=optimal"],
    })
    points = pd.DataFrame({"method": ["frontier"], "success_rate": [1.0], "max_feature_rel_error": [0.097],
                           "criterion": [""], "n_vertices": [0]})
    line = report.summary(pd.concat([frame.assign(n_vertices=5), points], ignore_index=True))
    assert ("largest feature error of the valid vertices, by method: gradient 9.90e-03 (rel<=0.01), "
            "exact 9.70e-09 (rel<=1e-06), paper 2.30e-01 (rel<=0.5).") in line  # the frontier's points: none
    # A row without a method (a store from before the column) was dropped by the grouping.
    unnamed = pd.DataFrame({"method": [None], "success_rate": [1.0], "max_feature_rel_error": [4.2e-3],
                            "criterion": ["rel<=0.01, nonpos<=0.01"], "n_vertices": [5]})
    line = report.summary(pd.concat([frame.assign(n_vertices=5), unnamed], ignore_index=True))
    assert line.endswith("paper 2.30e-01 (rel<=0.5), 4.20e-03 (rel<=0.01).")


def test_a_missing_value_reads_na_and_only_a_fine_rows_reason_is_empty():
    """A new user's trial: some cells were blank where the report's key says n/a."""
    record = {"row": 0, "method": "gradient", "init": None, "exact_proximity": float("nan"), "invalid_reason": None,
              "n_samples": 2000}
    cells_shown = {c: report._cell(c, record) for c in ("init", "exact_proximity", "invalid_reason", "n_samples")}
    assert cells_shown == {"init": "n/a", "exact_proximity": "n/a", "invalid_reason": "", "n_samples": "2000"}


def test_markdown_report_explains_every_number(root):
    text = report.markdown(ExperimentStore(root, "mnist"))
    assert "Success rate mean 1.0000 (min 1.0000) over 2 of 3 rows" in text
    assert "1 row without a success rate" in text and "FLAGGED random weights: 1 row" in text
    assert "nan" not in re.sub(r"base64,[^)]*", "", text).lower()
    assert f"n/a: {REASON}" in text
    assert "| 1 [random weights] |" in text and "| 1/5 |" in text
    assert "| 2000 | 1 | 0.999960 | 0.999910 |" in text  # success, target and samples probabilities
    assert "## Columns" in text and "input units" in text
    for column in report.GLOSSARY:
        assert f"- `{column}`:" in text
    assert "## Beside the paper" in text and "Table 2 row 1" in text and "Table 2 row 2" in text
    assert text.count("Table 2 row 2") == 1  # the random-weights row has no paper row to match
    header = text.split("## Beside the paper")[1].splitlines()[4]
    assert "vertex_avg_distance (ours) | vertex_avg_distance (paper)" in header
    assert "| 1.41 (10 pairs) | 1.33 |" in text  # 5 valid vertices, beside the paper's


def test_a_spread_from_two_valid_vertices_says_it_is_one_pair():
    """Issue "Sizes you can trust" §7: the paper rows' 1.26 / 1.28 rested on 2 of 5 valid vertices."""
    row = _metrics(0, method="paper", valid_vertices=2, vertex_pairs=1, vertex_avg_distance=1.26)
    assert report.display_frame(pd.DataFrame([row]))["vertex_avg_distance"][0] == "1.26 (1 pair)"
    assert "vertex distance 1.260 (1 pair)" in cells.row_summary(row)
    assert cells.pairs_text({"valid_vertices": 3}) == " (3 pairs)"  # stores from before the column
    assert cells.pairs_text({}) == ""


def test_a_flag_of_the_sets_statistics_is_not_set_beside_the_success_rate():
    """A new user's trial: "success 1 [set samples not mixed]" read as if the success rate were
    withheld; the flag withholds the collision set's sample statistics, and says so apart."""
    row = {**_metrics(2, method="exact"), "flags": "set-samples-not-mixed,random-weights"}
    assert cells.success_text(row) == "1 [random weights]"
    assert cells.row_summary(row).endswith("; flagged: set samples not mixed")
    assert "flagged" not in cells.row_summary(_metrics(2, method="exact"))


def test_a_row_of_points_and_a_row_under_a_partner_model_read_as_what_they_are():
    """A baseline's row has no vertices of its own: it read "5/0 vertices valid ... vertex
    distance n/a (10 pairs)"; transfer's two joint-region rows read alike (a new user's trial)."""
    hull = {"row": 0, "method": "gradient-hull", "init": "target", "n_vertices": 0, "valid_vertices": 5,
            "success_rate": 1.0, "max_feature_rel_error": 0.004}
    line = cells.row_summary(hull)
    assert line == ("row 0 (gradient-hull, init=target): points from 5 valid vertices; success rate 1; "
                    "feature error 4.0e-03")
    assert "points; success" in cells.row_summary({**hull, "valid_vertices": float("nan")})
    joint = {"row": 1, "method": "joint-region", "init": "target", "n_vertices": 0, "evaluated_under": "B",
             "model": "mnist-lenet5-lenet5"}
    assert cells.row_summary(joint).startswith("row 1 (joint-region, init=target, under B: mnist-lenet5-lenet5): "
                                               "points; ")


def test_a_runs_rows_that_method_and_init_do_not_tell_apart_are_told_by_what_differs():
    """A new user's trial: activations printed eight lines "row k (gradient, init=target)" with
    no activation or tolerance, and the baselines' two null-space rows (relu1, relu2) read alike."""
    rows = [_metrics(k, model=f"mnist-mlp-{a}", activation=a, saturation_tol=t, seed=0, solved=True, evaluated=True)
            for k, (a, t) in enumerate([("relu", None), ("tanh", 0.1), ("tanh", 0.03)])]
    lines = cells.run_lines(rows)
    assert lines[0].startswith("row 0 (gradient, init=target; model mnist-mlp-relu, activation relu, "
                               "saturation_tol none): ")
    assert lines[2].startswith("row 2 (gradient, init=target; model mnist-mlp-tanh, activation tanh, "
                               "saturation_tol 0.03): ")
    older = {k: v for k, v in rows[1].items() if k not in ("activation", "saturation_tol", "seed")}  # reused
    assert cells.run_lines([rows[0], older])[1].startswith("row 1 (gradient, init=target; model mnist-mlp-tanh): ")
    same = [_metrics(k, init=i, solved=True, evaluated=True) for k, i in enumerate(("target", "other"))]
    assert cells.run_lines(same)[0].startswith("row 0 (gradient, init=target): ")  # nothing to tell: as before
    layers = [_metrics(k, method="null-space", layer=layer, solved=False, evaluated=False)
              for k, layer in enumerate(("relu1", "relu2"))]
    assert [line.split(")")[0] for line in cells.run_lines(layers)[:2]] == [
        "row 0 (null-space, init=target; layer relu1", "row 1 (null-space, init=target; layer relu2"]


def test_html_report_shows_flags_validity_reference_and_units(root):
    page = (root / "report.html").read_text()
    assert "<h2>Columns</h2>" in page and "input units" in page
    assert html.escape(f"n/a: {REASON}") in page and "1 [random weights]" in page and "0.999960" in page
    assert "class=warn" in page and "Beside the paper" in page
    # the older ImageNet store: validity unknown, 0-255 distances shown in input units, Table 4 beside
    old = page.split("<h2>old</h2>")[1]
    assert "Table 4 row 1" in old and f"{5000 / 255:.4g}" in old and f"{4906.56 / 255:.4g}" in old
    assert ">?<" in old and "5000" not in old


def test_status_warns_of_flags_invalid_vertices_and_missing_success(root, capsys, monkeypatch):
    def no_arrays(*_a, **_k):
        raise AssertionError("status must read attrs only")

    monkeypatch.setattr(ExperimentStore, "read_row", no_arrays)
    by_name = {s["experiment"]: s for s in health.status(root)}
    mnist = by_name["mnist"]
    assert mnist["flagged"] == {"random-weights": [2]}
    assert mnist["invalid_vertex_rows"] == {"1": "1/5"}
    assert mnist["no_success_rate"] == {"1": REASON}
    assert mnist["unchecked_rows"] == [] and by_name["old"]["unchecked_rows"] == [0]
    assert main(["status", "--results-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "WARNING: mnist: row 2: random weights" in out
    assert "WARNING: mnist: row 1: no success rate: " + REASON in out
    assert "WARNING: mnist: row 1: only 1/5 vertices valid" in out
    assert "WARNING: old: row 0: evaluated before vertex validity was recorded" in out
    assert main(["status", "--results-root", str(root), "--json"]) == 0
    [first, _] = json.loads(capsys.readouterr().out)
    assert first["flagged"] == {"random-weights": [2]} and len(first["warnings"]) == 3


def test_the_docs_explain_the_reports_columns():
    storage = (PROJECT / "docs" / "storage.md").read_text()
    section = storage.split("## Reading the tables")[1].split("\n## ")[0]
    for column in set(report.GLOSSARY) - {"row", "model", "layer", "valid", "target_index", "config_digest"}:
        assert f"`{column}`" in section, column
    assert "input units" in section and "255" in section and "WARNING" in section


def test_a_bar_of_success_rates_says_n_a_and_k_of_n_where_a_bar_cannot():
    """A review: a withheld success rate drew no bar, which reads as 0."""
    from matplotlib.figure import Figure

    from collide.results.figures import label_rates

    ax = Figure().subplots()
    label_rates(ax, np.arange(3), np.array([np.nan, 0.5, 1.0]), np.array([0, 3, 4]), np.array([4, 4, 4]))
    assert [(t.get_position()[0], t.get_text()) for t in ax.texts] == [(0, "n/a"), (1, "3 of 4")]
