"""The activations experiment: activations x seeds x targets x tolerances crossed, each row
under its own activation's and seed's checkpoint and solved at its own tolerance, and a
summary whose numbers are pandas' own over the table's rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from collide.config import GradientConfig, RowSpec, SampleConfig, TrainConfig
from collide.datasets.mnist import load_mnist
from collide.errors import ConfigError
from collide.experiments import activations, engine, mnist
from collide.experiments.configs.activations import arch_of
from collide.models.zoo import load_checkpoint
from collide.results.store import ExperimentStore
from collide.taps import resolve_layer

ACTIVATIONS = ("relu", "tanh")
SEEDS = (0, 1)
LABELS = (7, 2)
TOLS = (0.1, 0.03)
# Summary statistics recomputed here from the same float64 values: equal up to summation order.
SAME_STAT = 1e-12


@pytest.fixture(scope="module")
def activations_run(tiny_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("activations")
    config = activations.Config(
        data_root=str(tiny_mnist), checkpoint_dir=str(root / "ck"), results_root=str(root / "res"), device="cpu",
        allow_download=False, activations=ACTIVATIONS, seeds=SEEDS, labels=LABELS, targets_per_label=1,
        saturation_tols=TOLS, train=TrainConfig(epochs=1, lr=1e-2, min_accuracy=0.0),  # saturates in one epoch
        sample=SampleConfig(n_samples=100, n_dataset_pairs=50), gradient=GradientConfig(max_steps=400),
    )
    out = engine.run(activations, config=config)
    table = pd.read_parquet(out["table"])
    store = ExperimentStore.of(config)
    attrs = [store.read_attrs(int(r)) for r in table["row"]]
    return config, out, table, attrs


def _saturated(activation: str, pre: torch.Tensor, tol: float | None) -> int:
    """Oracle, by hand from the activations' formulas: ReLU's non-positive units; tanh's
    units within ``tol`` of -1 or +1 (tanh is monotone, so its regime ends where
    |tanh(z) -+ 1| = tol, at z = -+atanh(1 - tol))."""
    if activation == "relu":
        return int((pre <= 0).sum())
    edge = math.atanh(1 - tol)
    return int(((pre <= -edge) | (pre >= edge)).sum())


def test_activations_seeds_targets_and_tolerances_are_crossed_each_row_under_its_own_model(activations_run):
    config, _, table, attrs = activations_run
    test = load_mnist(config.data_root, "test")
    # Every draw, written out by hand; ReLU (exactly flat) once per (seed, target).
    every = [(a, s, k, t) for a in ACTIVATIONS for s in SEEDS for k in range(len(LABELS))
             for t in ((None,) if a == "relu" else TOLS)]
    checkpoints = {(a, s): mnist.train_model(config=config.model_config(a, s)) for a in ACTIVATIONS for s in SEEDS}
    assert all(c["reused"] for c in checkpoints.values())  # trained by the run, reused here
    assert len({c["sha256"] for c in checkpoints.values()}) == len(checkpoints)
    # Each target: the first test image of its label that every model classifies correctly.
    models = {key: load_checkpoint(c["checkpoint"])[0] for key, c in checkpoints.items()}
    with torch.no_grad():
        right = torch.stack([m(test.images).argmax(1) == test.labels for m in models.values()]).all(0)
    targets = [int(torch.nonzero(right & (test.labels == label))[0]) for label in LABELS]
    # A draw has a row when its target has n_vertices saturated units there (oracle: a manual fc1).
    solved = []
    for a, s, k, t in every:
        w, b = models[(a, s)].fc1.weight.detach().double(), models[(a, s)].fc1.bias.detach().double()
        pre = test.images[targets[k]].double().flatten() @ w.T + b
        if _saturated(a, pre, t) >= config.n_vertices:
            solved.append((a, s, k, t))
    assert 0 < len(solved) == len(table)
    assert [(a["activation"], a["seed"], a["target_number"], a["saturation_tol"]) for a in attrs] == solved
    for a, row in zip(attrs, table.to_dict("records"), strict=True):
        meta = load_checkpoint(a["checkpoint"])[1]
        assert meta["config"]["arch"] == arch_of(a["activation"]) == a["arch"] == row["arch"]
        assert meta["config"]["seed"] == a["seed"] and a["target_index"] == targets[a["target_number"]]
        assert a["model_source"]["sha256"] == checkpoints[(a["activation"], a["seed"])]["sha256"]
        assert row["model"].endswith(arch_of(a["activation"])) and row["method"] == "gradient"
        assert int(row["target_class"]) == LABELS[a["target_number"]]
        # The layer is the first hidden activation's call in every model: fc1 names relu1, tanh1.
        model = models[(a["activation"], a["seed"])]
        assert resolve_layer(model, config.layer, torch.zeros(1, 1, 28, 28)) == f"{a['activation']}1"
        # A ReLU row is solved at the gradient config's tolerance (which it ignores), another at its own,
        # and its row's criterion says so (ReLU's names none).
        solved_at = config.gradient.saturation_tol if a["saturation_tol"] is None else a["saturation_tol"]
        assert a["solved_saturation_tol"] == solved_at
        assert a["criterion"].get("saturation_tol") == a["saturation_tol"]


def test_the_summary_is_pandas_own_statistics_over_the_rows(activations_run):
    config, out, table, attrs = activations_run
    summary = pd.read_parquet(out["summary"])
    frame = table.assign(activation=[a["activation"] for a in attrs],
                         tol=[-1.0 if a["saturation_tol"] is None else a["saturation_tol"] for a in attrs],
                         seed=[a["seed"] for a in attrs], target_index=[a["target_index"] for a in attrs])
    groups = [(a, t) for a in ACTIVATIONS for t in ((-1.0,) if a == "relu" else TOLS)]
    assert len(summary) == len(groups) * len(activations.COLUMNS)
    for activation, tol in groups:
        group = frame[(frame["activation"] == activation) & (frame["tol"] == tol)]
        for column in activations.COLUMNS:
            [s] = summary[(summary["activation"] == activation) & (summary["column"] == column)
                          & ((summary["saturation_tol"] == tol) | (summary["saturation_tol"].isna() & (tol < 0)))
                          ].to_dict("records")
            # Every (seed, target) is a draw; those with rows were solved.
            assert s["draws"] == len(SEEDS) * len(LABELS) and s["solved"] == len(group)
            values = group[column].astype(float).dropna().to_numpy()
            assert s["n"] == len(values) and s["missing"] == group[column].isna().sum()
            if len(values):
                assert s["mean"] == pytest.approx(values.mean(), abs=SAME_STAT)
                assert s["min"] == values.min() and s["max"] == values.max()
            if len(values) >= 2:
                assert s["std"] == pytest.approx(values.std(ddof=1), abs=SAME_STAT)
                per_seed = group.groupby("seed")[column].mean()
                assert s["between_seed_std"] == pytest.approx(per_seed.std(ddof=1), abs=SAME_STAT, nan_ok=True)
    assert out["summary_figure"].endswith("activations-summary.png")
    # The ReLU draws have no tolerance: NaN in the summary, never a number it was not solved at.
    assert summary[summary["activation"] == "relu"]["saturation_tol"].isna().all()
    assert set(summary[summary["activation"] == "tanh"]["saturation_tol"]) == set(TOLS)


def test_a_rerun_reuses_every_row(activations_run):
    config, _, table, _ = activations_run
    again = engine.run(activations, config=config)
    assert again["reused_rows"] == len(table) and again["summary_reused"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"activations": ("relu", "swish")}, "activations: expected some of"),
    ({"activations": ("tanh", "tanh")}, "distinct activations"),
    ({"train": TrainConfig(arch="lenet5")}, "leave train.arch at 'mlp'"),
    ({"layer": "relu1"}, "layer: expected one of"),
    ({"rows": (RowSpec("exact", "target"),)}, "gradient method only"),
    ({"saturation_tols": (0.1, 0.0)}, "saturation_tols > 0"),
    ({"saturation_tols": (0.1, math.nan)}, "saturation_tols > 0"),
    ({"targets_per_class": 1}, "not targets_per_class"),
])
def test_bad_configs_are_refused_by_name(changes, message):
    with pytest.raises(ConfigError, match=message):
        activations.Config(**changes)


def test_the_defaults_are_the_full_comparison():
    config = activations.Config()
    assert config.activations == ("relu", "tanh", "sigmoid", "elu", "gelu") and config.layer == "fc1"
    # ReLU once per (seed, target), the four smooth ones once per tolerance.
    assert config.n_rows == len(config.seeds) * config.n_targets * (1 + 4 * len(config.saturation_tols))
    assert np.all(np.diff(config.saturation_tols) < 0)  # tightening, as the figure reads
