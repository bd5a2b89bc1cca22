"""The frontier experiment end to end on the synthetic MNIST (no downloads)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from collide.comparisons.frontier import FrontierConfig
from collide.config import SampleConfig, TrainConfig
from collide.errors import LayerError
from collide.experiments import engine, frontier
from collide.experiments.frontier import FrontierExperiment
from collide.results.store import ExperimentStore


def _config(data_root, root, **changes) -> FrontierExperiment:
    return FrontierExperiment(
        data_root=str(data_root), checkpoint_dir=str(root / "checkpoints"), results_root=str(root / "results"),
        device="cpu", allow_download=False, train=TrainConfig(epochs=1, min_accuracy=0.0),
        sample=SampleConfig(n_samples=10, n_dataset_pairs=50), frontier=FrontierConfig(epsilons=(0.0, 0.1, 0.3)),
        **changes,
    )


@pytest.fixture(scope="module")
def ran(tiny_mnist, tmp_path_factory):
    config = _config(tiny_mnist, tmp_path_factory.mktemp("frontier"))
    return config, engine.run(frontier, config=config)


def test_one_row_per_epsilon_each_meeting_its_claim(ran):
    config, out = ran
    table = pd.read_parquet(out["table"]).sort_values("row")
    assert table["epsilon"].tolist() == [0.0, 0.1, 0.3]
    assert table["claim_met"].all() and (table["method"] == "frontier").all()
    assert (table["max_feature_rel_error"] <= table["epsilon"] + 1e-6).all()
    assert table["distance_to_other"].is_monotonic_decreasing
    assert (table["solver_outcome"] == "optimal").all()


def test_the_lower_bound_is_named_for_the_convex_inner_set_and_old_stores_read_as_new(ran, tmp_path):
    """Issue "Sizes you can trust" §7: the dual bound holds over {E ≤ ε} only, and says so."""
    config, out = ran
    table = frontier.frontier_table(ExperimentStore.of(config))
    assert frontier.LOWER_BOUND == "distance_lower_bound_inner" and "distance_lower_bound" not in table.columns
    bound, dist = table[frontier.LOWER_BOUND], table["distance_to_other"]
    assert bound.iloc[0] != bound.iloc[0]  # NaN at ε = 0: the exact QP has no dual bound
    assert (bound.iloc[1:] <= dist.iloc[1:] + 1e-9).all() and (bound.iloc[1:] > 0).all()
    # a store written before the rename reads with the new name
    old_root = tmp_path / "old"
    old_root.mkdir()
    table.rename(columns={frontier.LOWER_BOUND: "distance_lower_bound"}).to_parquet(old_root / "frontier.parquet")
    old = frontier.frontier_table(ExperimentStore(old_root, "frontier"))
    pd.testing.assert_series_equal(old[frontier.LOWER_BOUND], bound)
    images = {int(r): np.zeros((1, 28, 28)) for r in table["row"]}
    side = {int(t): np.zeros((1, 28, 28)) for t in table["target_index"]}
    fig = frontier.draw_frontier(table, images, side, side)
    labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("lower bound (convex inner set E ≤ ε)") for label in labels), labels


def test_the_frontier_figure_is_written(ran):
    _, out = ran
    assert out["frontier_figure"].endswith("frontier-frontier.png")


def test_rows_of_points_read_as_points_not_as_a_polytopes_vertices(ran, monkeypatch):
    """A new user's trial: the frontier's figure said "polytopes colliding with the target"
    over "vertex 0" columns (a point at ε = 0.1 need not collide), and the report's valid
    column read "?", which it defines as a row from before validity was recorded."""
    from collide.results import cells, vertex_figure

    config, _ = ran
    seen = {}
    monkeypatch.setattr(vertex_figure, "vertex_grid", lambda *a, **kw: seen.update(kw))
    store = ExperimentStore.of(config)
    vertex_figure.write_figure(store, store.rows())
    assert seen["item"] == "point" and "colliding" not in seen["title"]
    assert seen["title"].startswith("frontier: the first 5 points of each row, for the target at relu1")
    assert cells.valid_text(store.read_attrs(0)["metrics"]) == "none (points)"
    assert cells.valid_text({"n_vertices": 0, "valid_vertices": 5}) == "points of 5"


def test_a_finished_frontier_reruns_as_a_no_op(ran):
    config, _ = ran
    again = engine.run(frontier, config=config)
    assert again["reused_rows"] == len(again["rows"]) == 3


def test_a_deeper_layer_is_refused_before_any_work(tiny_mnist, tmp_path):
    with pytest.raises(LayerError, match="first ReLU layer"):
        frontier.validate(config=_config(tiny_mnist, tmp_path, layer="relu2"))


def test_the_config_round_trips_through_json(tiny_mnist, tmp_path):
    config = _config(tiny_mnist, tmp_path)
    again = FrontierExperiment.from_dict(config.to_dict())
    assert again == config and again.digest() == config.digest()
