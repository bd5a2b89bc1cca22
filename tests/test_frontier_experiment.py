"""The frontier experiment end to end on the synthetic MNIST (no downloads)."""

from __future__ import annotations

import pandas as pd
import pytest

from collide.config import SampleConfig, TrainConfig
from collide.errors import LayerError
from collide.experiments import engine, frontier
from collide.experiments.frontier import FrontierExperiment
from collide.solvers.frontier import FrontierConfig


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


def test_the_frontier_figure_is_written(ran):
    _, out = ran
    assert out["frontier_figure"].endswith("frontier-frontier.png")


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
