"""Exact rows' collision sets in the store, the layer profile and the transfer experiment,
end to end on the synthetic MNIST, each rechecked by ``collide verify``'s route."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collide.config import GradientConfig, RowSpec, SampleConfig, TrainConfig
from collide.experiments import engine, mnist, profile, transfer
from collide.results import points, tables
from collide.results.health import status
from collide.results.store import ExperimentStore
from collide.results.verify import verify
from flows.cli import main
from tests.support import LIGHT_GEOMETRY, small_mnist_config, snapshot
from tests.tolerances import LP_STORED_REL_ERROR_F64, SET_EXACT

SMALL = dict(device="cpu", allow_download=False, train=TrainConfig(epochs=2, min_accuracy=0.0),
             sample=SampleConfig(n_samples=100, n_dataset_pairs=50), gradient=GradientConfig(max_steps=400),
             geometry=LIGHT_GEOMETRY)


def _paths(data, root) -> dict[str, str]:
    return {"data_root": str(data), "checkpoint_dir": str(root / "ck"), "results_root": str(root / "res")}


@pytest.fixture(scope="module")
def exact_run(tiny_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    config = small_mnist_config(tiny_mnist, root, rows=(RowSpec("exact", "target"),))
    return config, engine.run(mnist, config=config)


def test_an_exact_row_stores_its_collision_set_and_verify_recomputes_it(exact_run):
    config, out = exact_run
    row = pd.read_parquet(out["table"]).iloc[0]
    arrays, attrs = ExperimentStore.of(config).read_row(0)
    assert row["region_dim"] == attrs["geometry"]["dim"] <= row["region_free_dim"] == row["dim_upper_bound"]
    assert row["region_n_samples"] == len(arrays["region_samples"]) == LIGHT_GEOMETRY.n_samples
    assert row["region_claim_met"] and row["region_max_feature_rel_error"] <= LP_STORED_REL_ERROR_F64
    assert row["region_mean_width"] >= row["hull_mean_width"] - SET_EXACT  # the hull lies inside C
    assert np.isfinite(row["region_rhat"]) or LIGHT_GEOMETRY.n_samples // LIGHT_GEOMETRY.chains < 4
    (checked,) = verify(ExperimentStore.of(config))
    assert checked["problems"] == [] and checked["region_dim_certified"]  # full-dimensional: its ball says so


def test_verify_catches_a_region_sample_moved_off_the_set_and_a_ball_made_too_large(exact_run):
    config, _ = exact_run
    root, name = config.results_root, config.name
    arrays, attrs = ExperimentStore(root, name).read_row(0)
    try:
        moved = arrays["region_samples"].copy()
        moved[3] = np.clip(arrays["target"] + 0.3, 0, 1)  # a brighter target: not a collision
        ExperimentStore(root, name).write_row(0, {"region_samples": moved}, {}, keep_existing=True)
        problems = verify(ExperimentStore(root, name))[0]["problems"]
        assert any("region samples [3] do not collide exactly" in p for p in problems)
        ExperimentStore(root, name).write_row(0, {"region_samples": arrays["region_samples"]},
                                              {"geometry": {**attrs["geometry"],
                                                            "radius": attrs["geometry"]["radius"] * 2 + 0.01}},
                                              keep_existing=True)
        assert any("inscribed ball" in p for p in verify(ExperimentStore(root, name))[0]["problems"])
        geometry = attrs["geometry"]
        for dim, said in ((geometry["free_dim"] + 1, "is above its set's subspace dimension"),
                          (geometry["free_dim"] - 1, None)):
            ExperimentStore(root, name).write_row(0, {"region_samples": arrays["region_samples"]},
                                                  {"geometry": {**geometry, "dim": dim}}, keep_existing=True)
            (checked,) = verify(ExperimentStore(root, name))
            # a dimension below the subspace's with no pinned rows is not certified, not wrong
            assert any(said in p for p in checked["problems"]) if said else checked["problems"] == []
            assert not checked["region_dim_certified"]
    finally:
        ExperimentStore(root, name).write_row(0, arrays, attrs)


@pytest.fixture(scope="module")
def profile_run(tiny_mnist, tmp_path_factory):
    """One profile run; a test that damages its files leaves them as the run wrote them."""
    config = profile.Config(**_paths(tiny_mnist, tmp_path_factory.mktemp("profile")), **SMALL, archs=("mlp",),
                            targets=1)
    return config, engine.run(profile, config=config)


def test_the_profile_covers_every_layer_and_summarises_by_depth(profile_run):
    config, out = profile_run
    table = pd.read_parquet(out["table"])
    assert len(table) == config.n_rows == 4
    assert table.groupby("layer")["method"].apply(sorted).to_dict() == {
        "relu1": ["exact", "gradient"], "relu2": ["exact", "gradient"]}
    summary = pd.read_parquet(out["summary"])
    assert summary[["layer", "depth"]].values.tolist() == [["relu1", 1], ["relu2", 2]]
    exact = table[table["method"] == "exact"].set_index("layer")
    assert summary.set_index("layer")["region_dim"].to_dict() == exact["region_dim"].to_dict()
    assert all(not r["problems"] for r in verify(ExperimentStore.of(config)))


def test_a_missing_or_edited_summary_is_reported_and_a_run_rewrites_it(profile_run, capsys):
    config, out = profile_run
    summary, figure = Path(out["summary"]), Path(out["summary_figure"])
    written = figure.read_bytes()

    def entry() -> dict:
        [e] = [e for e in status(config.results_root) if e["experiment"] == config.name]
        return e

    before = entry()
    assert before["table_fresh"] and before["damaged_outputs"] == {}
    summary.unlink()
    figure.write_bytes(written + b"edited")
    damaged = entry()
    assert damaged["damaged_outputs"] == {summary.name: "missing", figure.name: "changed since it was written"}
    assert damaged["table_fresh"]  # the table and its figure are as written: `collide tables` would change nothing
    assert main(["status", "--results-root", config.results_root]) == 0
    printed = capsys.readouterr().out
    assert "table up to date; a summary or figure of its own is NOT as the run wrote it (see below)" in printed
    assert f"WARNING: {config.name}: {summary} is missing; rerun" in printed
    rerun = f"rerun `collide run profile --config {config.results_root}/{config.name}.run.json`, which rewrites it"
    # The store's own files first, then its rows.
    assert damaged["warnings"] == [f"{summary} is missing; {rerun}",
                                   f"{figure} is changed since it was written; {rerun}", *before["warnings"]]
    with engine.lock(config, profile):  # a run in progress removes and rewrites them: not reported meanwhile
        assert entry()["damaged_outputs"] == {} and entry()["running"]
    tables.regenerate(config.results_root)  # the table and figure only: the summaries' record is kept
    assert entry()["damaged_outputs"] == damaged["damaged_outputs"]
    again = engine.run(profile, config=config)
    assert again["reused_rows"] == config.n_rows and not again["summary_reused"]
    assert figure.read_bytes() == written and summary.is_file()
    assert entry()["warnings"] == before["warnings"] and entry()["table_fresh"]
    figure.write_bytes(b"edited")  # beside a summary whose values are unchanged
    engine.run(profile, config=config)
    assert figure.read_bytes() == written and entry()["table_fresh"]
    files = snapshot(config.results_root)
    engine.run(profile, config=config)
    assert snapshot(config.results_root) == files  # nothing damaged: not one byte or mtime written


def test_a_joint_set_collides_in_both_models_and_the_transfer_rows_measure_the_partner(tiny_mnist, tmp_path):
    config = transfer.Config(**_paths(tiny_mnist, tmp_path), **SMALL, partners=("mlp:1",))
    out = engine.run(transfer, config=config)
    table = pd.read_parquet(out["table"]).set_index("row")
    assert list(zip(table["method"], table["evaluated_under"], strict=True)) == [
        ("joint-region", "A"), ("joint-region", "B"), ("exact-region", "B"), ("gradient-hull", "B")]
    joint = table.loc[[0, 1]]
    assert joint["claim_met"].all() and (joint["max_feature_rel_error"] <= LP_STORED_REL_ERROR_F64).all()
    assert joint["joint_dim"].iloc[0] <= joint["a_dim"].iloc[0]  # more rows, a smaller set
    assert table.loc[0, "model"] != table.loc[1, "model"]
    # Rows 0-2 are collision sets' samples: where the chains did not mix (the sampler's own
    # stored record says so), their success rate and distances are withheld and flagged, as
    # an exact row's set statistics are (a new user's trial: a joint set at R-hat 1.10 reported them).
    store = ExperimentStore.of(config)
    mixed = {r: store.read_attrs(r)["sampler"]["converged"] for r in (0, 1, 2)}
    assert "sampler" not in store.read_attrs(3)  # the hull's samples are no chain's
    assert not all(mixed.values())  # LIGHT_GEOMETRY's 30 draws: the case under test happens
    for r, ok in mixed.items():
        statistics = table.loc[r, ["success_rate", "mean_distance_to_target", "points_spread"]].astype(float)
        assert statistics.notna().all() if ok else statistics.isna().all(), (r, ok)
        assert ("set-samples-not-mixed" in str(table.loc[r, "flags"])) == (not ok)
        assert ("did not mix" in table.loc[r, "invalid_reason"]) == (not ok)
    assert table.loc[[0, 1, 2], "max_feature_rel_error"].notna().all()  # every point's bound stands
    assert pd.notna(table.loc[3, "success_rate"])
    assert [p for r in verify(store) for p in r["problems"]] == []
    # The referee wants every statistic of an unmixed set's law withheld, in the store and the
    # table: one kept (a spread) is caught; and a set's row with no sampler record (written
    # before rows kept one) is not taken as mixed.
    first = min(r for r, ok in mixed.items() if not ok)
    arrays, attrs = store.read_row(first)
    kept = {**attrs, "metrics": {**attrs["metrics"], "points_spread": 1.5}}
    ExperimentStore(tmp_path / "elsewhere", "doctored").write_row(first, arrays, kept)
    [entry] = verify(ExperimentStore(tmp_path / "elsewhere", "doctored"))
    assert entry["problems"][0] == "points_spread: store 1.5, withheld as the set's samples did not mix"
    assert entry["problems"][1:] == ["no table file doctored.parquet: run `collide tables`"]  # a store alone
    assert points.unmixed({k: v for k, v in attrs.items() if k != "sampler"}).startswith("not diagnosed")
    assert points.unmixed({"method": "random-ball"}) is None  # no set: nothing to diagnose
    [entry] = [e for e in status(config.results_root) if e["experiment"] == config.name]
    # Points rows have no vertices to be unchecked: only the unmixed rows are warned of.
    unmixed = sorted(r for r, ok in mixed.items() if not ok)
    assert entry["flagged"] == {"set-samples-not-mixed": unmixed} and entry["table_fresh"]
    assert sorted(int(r) for r in entry["no_success_rate"]) == unmixed
    # The report shows what the experiment concludes, its summary table and figure, as the
    # run wrote them (a new user's trial: report.html showed no summary of any experiment).
    from collide.results.report import write_report
    from collide.results.store import stores

    summary = pd.read_parquet(store.output("-summary.parquet")).set_index("kind")
    # A kind whose only target's set did not mix has no success rate to average, and says so.
    kinds = {0: "joint-region@A", 1: "joint-region@B", 2: "exact-region@B"}
    assert all((summary.loc[kinds[r], "scored"] == 0) == (not ok) for r, ok in mixed.items())
    assert summary.loc["gradient-hull@B", "scored"] == summary.loc["gradient-hull@B", "targets"] == 1
    summary = summary.reset_index()
    page = write_report(config.results_root, stores(config.results_root)).read_text()
    assert "<h3>transfer-summary.parquet</h3>" in page and "<h3>transfer-summary.png</h3>" in page
    assert all(f"<td>{kind}</td>" in page for kind in summary["kind"])
    store.output("-summary.png").write_bytes(b"not the figure the run drew")
    page = write_report(config.results_root, stores(config.results_root)).read_text()
    assert "<h3>transfer-summary.png</h3>" not in page
    assert "transfer-summary.png is changed since it was written" in page
    with pytest.raises(Exception, match="model A itself"):
        transfer.Config(partners=("mlp:0",))
