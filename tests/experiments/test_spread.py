"""The spread experiment: seeds x targets crossed, each row under its own seed's checkpoint,
and a summary whose numbers are pandas' and scipy's own over the table's rows."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from collide.comparisons.baselines import BallConfig, NullSpaceConfig
from collide.config import GradientConfig, SampleConfig, TrainConfig
from collide.errors import ConfigError
from collide.experiments import engine, mnist, spread
from collide.experiments.configs.spread import BASELINES
from collide.models.zoo import load_checkpoint
from collide.results.reference import TABLE_2
from collide.results.store import ExperimentStore
from tests.support import LIGHT_GEOMETRY

SEEDS = (0, 1)
LABELS = (7, 2)
# Summary statistics recomputed here from the same float64 values: equal up to summation order.
SAME_STAT = 1e-12
# The summary reads the sets' LP sizes (dimension, radius, widths), not their samples: few draws.
GEOMETRY = dataclasses.replace(LIGHT_GEOMETRY, max_draws=5)


@pytest.fixture(scope="module")
def spread_run(tiny_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("spread")
    config = spread.Config(
        data_root=str(tiny_mnist), checkpoint_dir=str(root / "ck"), results_root=str(root / "res"), device="cpu",
        allow_download=False, seeds=SEEDS, labels=LABELS, targets_per_label=1,
        train=TrainConfig(epochs=1, min_accuracy=0.0), sample=SampleConfig(n_samples=100, n_dataset_pairs=50),
        gradient=GradientConfig(max_steps=400), geometry=GEOMETRY, baselines=BASELINES,
        ball=BallConfig(n=100), null_space=NullSpaceConfig(n=100),
    )
    out = engine.run(spread, config=config)
    table = pd.read_parquet(out["table"])
    # A points row (a baseline) keeps what it adds in its columns.
    attrs = [{**a.get("columns", {}), **a} for a in
             (ExperimentStore.of(config).read_attrs(int(r)) for r in table["row"])]
    return config, out, table, attrs


def test_seeds_and_targets_are_crossed_and_each_row_uses_its_seeds_checkpoint(spread_run):
    config, _, table, attrs = spread_run
    kinds = [(r.method, r.init) for r in config.rows] + [(b, "target") for b in BASELINES]
    assert len(table) == config.n_rows == len(SEEDS) * len(LABELS) * len(kinds)
    # Oracle: the checkpoint mnist.train_model gives (reuses) for each seed, and the seed it records.
    checkpoints = {s: mnist.train_model(config=config.seed_config(s)) for s in SEEDS}
    assert all(c["reused"] for c in checkpoints.values())
    assert len({c["sha256"] for c in checkpoints.values()}) == len(SEEDS)  # other seed, other weights
    for s, c in checkpoints.items():
        assert load_checkpoint(c["checkpoint"])[1]["config"]["seed"] == s
    targets = {}
    for a in attrs:
        i, rest = divmod(a["row"], config.n_targets * len(kinds))
        k, j = divmod(rest, len(kinds))
        assert a["seed"] == SEEDS[i] and a["target_number"] == k
        assert (a["method"], a["init"]) == kinds[j]
        assert a["checkpoint_sha256"] == checkpoints[a["seed"]]["sha256"]
        assert a["model_source"]["sha256"] == checkpoints[a["seed"]]["sha256"]
        assert a["test_accuracy"] == checkpoints[a["seed"]]["test_accuracy"]
        targets.setdefault(k, set()).add(a["target_index"])
    # The same target under every seed; its label is the one asked for, and every model gets it right.
    assert all(len(v) == 1 for v in targets.values())
    by_index = table.set_index("row")
    for a in attrs:
        assert int(by_index.loc[a["row"], "target_class"]) == LABELS[a["target_number"]]
        assert (a["init_index"] == a["target_index"]) is (a["init"] == "target")
    exact = table[table["method"] == "exact"]
    assert exact["region_dim"].notna().all() and (exact["n_positive"] > 0).all()


def test_the_summary_is_pandas_own_mean_std_and_t_interval_over_the_rows(spread_run):
    config, out, table, attrs = spread_run
    summary = pd.read_parquet(out["summary"])
    frame = table.assign(seed=[a["seed"] for a in attrs])
    n_draws = len(SEEDS) * config.n_targets
    assert set(zip(summary["method"], summary["init"], strict=True)) == set(zip(frame["method"], frame["init"],
                                                                                strict=True))
    for (method, init), group in frame.groupby(["method", "init"]):
        ours = summary[(summary["method"] == method) & (summary["init"] == init)].set_index("column")
        points = method in BASELINES  # points rows: no vertices, no polytope columns
        for column in ("success_rate", "max_feature_rel_error", "target_top_prob") if points else (
                "success_rate", "vertex_avg_distance", "max_feature_rel_error", "valid_vertices", "target_top_prob"):
            values = group[column].astype(float)
            row = ours.loc[column]
            assert row["n"] + row["missing"] == n_draws and row["n"] == values.notna().sum()
            assert row["mean"] == pytest.approx(values.mean(), rel=SAME_STAT, abs=SAME_STAT)
            assert row["std"] == pytest.approx(values.std(ddof=1), rel=SAME_STAT, abs=SAME_STAT)
            assert (row["min"], row["max"]) == (values.min(), values.max())
            sem = values.std(ddof=1) / math.sqrt(values.notna().sum())
            low, high = (stats.t.interval(0.95, values.notna().sum() - 1, loc=values.mean(), scale=sem)
                         if sem > 0 else (values.mean(), values.mean()))
            top = 1.0 if column in ("success_rate", "target_top_prob", "samples_top_prob") else math.inf
            low, high = max(low, 0.0), min(high, top)
            assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((low, high), rel=1e-9, abs=SAME_STAT)
            per_seed = group.groupby("seed")[column].mean()
            per_target = group.groupby("target_index")[column].mean()
            assert row["n_seeds"] == len(SEEDS) and row["n_targets"] == config.n_targets
            assert row["between_seed_std"] == pytest.approx(per_seed.std(ddof=1), rel=SAME_STAT, abs=SAME_STAT)
            assert row["between_target_std"] == pytest.approx(per_target.std(ddof=1), rel=SAME_STAT,
                                                              abs=SAME_STAT)
        region = {"region_dim", "region_radius", "region_mean_width", "n_positive"}
        if method == "exact":
            assert region <= set(ours.index)
            assert ours.loc["region_dim", "n"] == n_draws
            assert ours.loc["region_dim", "mean"] == pytest.approx(group["region_dim"].mean(), rel=SAME_STAT)
            assert ours.loc["n_positive", "mean"] == pytest.approx(group["n_positive"].mean(), rel=SAME_STAT)
        else:  # a gradient or points row measures no set and records no N+: not a draw, not a summary row
            assert not region & set(ours.index)
        if points:
            assert not {"vertex_avg_distance", "valid_vertices"} & set(ours.index)


def test_synthetic_data_get_no_paper_comparison_and_a_rerun_computes_nothing(spread_run):
    config, out, _, _ = spread_run
    assert out["paper_verdicts"] == [] and pd.read_parquet(out["paper_comparison"]).empty
    again = engine.run(spread, config=config)
    assert again["reused_rows"] == config.n_rows and again["summary_reused"]


def _draws(values: list[float], column: str, init: str = "target") -> pd.DataFrame:
    """Rows of the MNIST MLP at relu1, one per value: seeds 0, 1 crossed with targets 10, 11."""
    n = len(values)
    frame = pd.DataFrame({
        "method": "gradient", "init": init, "model": "mnist-mlp", "layer": "relu1", "dataset": "MNIST",
        "random_weights": False, "flags": "", "seed": [k // 2 for k in range(n)],
        "target_index": [10 + k % 2 for k in range(n)],
    })
    for c in spread.COLUMNS:
        frame[c] = np.nan
    frame[column] = values
    return frame


def test_the_paper_row_is_found_whichever_label_comes_first_and_never_for_other_digits_alone():
    """Table 2's target is a 7: a group whose first draw is a 2 still has it (its 7s), one of
    2s alone has none (the reviewer of "only a 7": the first row alone decided)."""
    frame = _draws([1.0, 1.1, 1.2, 1.15], "vertex_avg_distance").assign(target_class=[2, 7, 2, 7])
    [row] = spread.paper_comparison(frame, spread.spread_summary(frame)).to_dict(orient="records")
    assert row["paper_row"] == "paper Table 2 row 1"
    twos = frame.assign(target_class=2)
    assert spread.paper_comparison(twos, spread.spread_summary(twos)).empty


def test_a_means_interval_from_few_draws_is_cut_to_what_the_column_can_be_and_said_so():
    """A new user's trial: two draws gave a success rate's 95% CI as -2.473-3.033, a distance's
    as -4.322-21.38 (the dash read as a minus), and "OUTSIDE our range" beside in_ci95 True."""
    frame = _draws([0.5, 1.0], "success_rate")
    [rate] = spread.spread_summary(frame).query("column == 'success_rate'").to_dict(orient="records")
    raw = stats.t.interval(0.95, 1, loc=0.75, scale=0.25)  # the oracle: scipy's, uncut
    assert raw[0] < 0 and raw[1] > 1 and (rate["ci95_low"], rate["ci95_high"]) == (0.0, 1.0)
    frame = _draws([2.0, 4.0], "vertex_avg_distance")
    summary = spread.spread_summary(frame)
    [row] = summary.query("column == 'vertex_avg_distance'").to_dict(orient="records")
    high = stats.t.interval(0.95, 1, loc=3.0, scale=1.0)[1]
    assert row["ci95_low"] == 0.0 and row["ci95_high"] == pytest.approx(high)
    [verdict] = spread.paper_comparison(frame, summary).to_dict(orient="records")
    assert not verdict["in_range"] and verdict["in_ci95"]  # the paper's 1.33: below every draw, inside the CI
    assert verdict["verdict"].endswith("OUTSIDE our range, though inside the 95% CI of our mean: too few draws to tell")
    assert f"our range 2 to 4 (mean 3, 95% CI 0 to {high:.4g}, n=2)" in verdict["verdict"]


def test_the_paper_value_is_judged_against_our_range_not_our_mean():
    # Table 2 row 1 prints 1.33; our draws 1.0-1.2: outside, whatever the mean.
    frame = _draws([1.0, 1.1, 1.2, 1.15], "vertex_avg_distance")
    comparison = spread.paper_comparison(frame, spread.spread_summary(frame))
    [row] = comparison.to_dict(orient="records")
    assert row["paper"] == TABLE_2[0].vertex_avg_distance and row["paper_row"] == "paper Table 2 row 1"
    assert (row["min"], row["max"], row["n"]) == (1.0, 1.2, 4) and not row["in_range"] and not row["in_ci95"]
    assert "OUTSIDE our range" in row["verdict"]
    # A draw of 1.334 would print as 1.33: inside the range, though the mean is far below it.
    frame = _draws([1.0, 1.01, 1.02, 1.334], "vertex_avg_distance", init="other")
    [row] = spread.paper_comparison(frame, spread.spread_summary(frame)).to_dict(orient="records")
    assert row["paper_row"] == "paper Table 2 row 2" and row["in_range"]
    # Success 0.996 prints as "100%"; 0.99 does not.
    for values, inside in (([0.996, 0.999, 1.0, 1.0], True), ([0.9, 0.95, 0.99, 0.98], False)):
        frame = _draws(values, "success_rate")
        [row] = spread.paper_comparison(frame, spread.spread_summary(frame)).to_dict(orient="records")
        assert row["column"] == "success_rate" and row["in_range"] is inside
    # The dataset distance, one estimate every draw shares, is said to be one; a success rate
    # that happens to be 1 in every draw is not.
    frame = _draws([10.18] * 4, "dataset_avg_distance")
    [row] = spread.paper_comparison(frame, spread.spread_summary(frame)).to_dict(orient="records")
    assert not row["in_range"] and "one estimate shared by every draw" in row["verdict"]
    frame = _draws([1.0] * 4, "success_rate")
    [row] = spread.paper_comparison(frame, spread.spread_summary(frame)).to_dict(orient="records")
    assert row["in_range"] and row["in_ci95"] and "shared" not in row["verdict"]
    # Other data, or another layer: no paper row to compare with.
    other = _draws([1.0, 1.1, 1.2, 1.15], "vertex_avg_distance").assign(dataset="digits", model="digits-mlp")
    assert spread.paper_comparison(other, spread.spread_summary(other)).empty
    deeper = _draws([1.0, 1.1, 1.2, 1.15], "vertex_avg_distance").assign(layer="relu2")
    assert spread.paper_comparison(deeper, spread.spread_summary(deeper)).empty
    # A baseline's points are not Table 2's polytope, however alike its row looks.
    ball = _draws([1.0, 1.0, 1.0, 1.0], "success_rate").assign(method="random-ball")
    assert spread.paper_comparison(ball, spread.spread_summary(ball)).empty


def test_between_seed_and_between_target_spread_are_told_apart():
    # Seed 1 adds 1 to every target; the targets differ by 0.1: the seeds carry the spread.
    frame = _draws([1.0, 1.1, 2.0, 2.1], "vertex_avg_distance")
    row = spread.spread_summary(frame).set_index("column").loc["vertex_avg_distance"]
    assert row["between_seed_std"] == pytest.approx(np.std([1.05, 2.05], ddof=1), rel=SAME_STAT)
    assert row["between_target_std"] == pytest.approx(np.std([1.5, 1.6], ddof=1), rel=SAME_STAT)


@pytest.mark.parametrize("changes, message", [
    ({"seeds": (0, 0)}, "distinct seeds"),
    ({"seeds": ()}, "distinct seeds"),
    ({"labels": (7, 11)}, "labels in 0..9"),
    ({"targets_per_label": 0}, "targets_per_label >= 1"),
    ({"targets_per_class": 2}, "not targets_per_class"),
    ({"baselines": ("inversion",)}, "expected baselines from"),
    ({"baselines": ("random-ball",), "rows": ({"method": "exact", "init": "target"},)}, "keep the row"),
])
def test_bad_configs_are_refused_by_name(changes, message):
    with pytest.raises(ConfigError, match=message):
        spread.Config.from_dict(changes)


def test_the_config_round_trips_and_the_defaults_plan_a_hundred_rows():
    config = spread.Config.from_dict({"seeds": [3, 4], "labels": [1], "baselines": []})
    assert config.seeds == (3, 4) and config.labels == (1,) and config.n_rows == 2 * 2 * 3
    assert spread.Config.from_dict(config.to_dict()).digest() == config.digest()
    assert spread.Config().n_rows == 5 * 4 * (3 + 2)
