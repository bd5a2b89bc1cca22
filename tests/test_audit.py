"""collide.scan: every example ranked, from a batch, a Dataset or a DataLoader, resumable."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import collide
from collide.api import collision_size
from collide.audit import COLUMNS, ScanConfig
from collide.errors import ConfigError, DataError
from collide.polytope import avg_pairwise_distance
from tests.tolerances import UNCHANGED

CONFIG = ScanConfig(n_vertices=3, gradient=collide.GradientConfig(max_steps=1000), chunk=4, certify=1)


def _model() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


def _data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 6, 6, generator=gen), torch.randint(0, 4, (n,), generator=gen)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    x, y = _data()
    store = tmp_path_factory.mktemp("scan")
    return collide.scan(_model(), "2", x, labels=y, config=CONFIG, store=store), store


def test_every_example_is_ranked_by_its_certified_radius(scanned):
    frame, _ = scanned
    model, (x, y) = _model(), _data()
    assert list(frame.columns) == list(COLUMNS) and sorted(frame["index"]) == list(range(len(x)))
    assert list(frame["rank"]) == list(range(1, len(x) + 1)) and set(frame["rank_by"]) == {"radius"}
    assert frame["radius"].is_monotonic_decreasing and (frame["size"] == frame["radius"]).all()
    with torch.no_grad():
        prob = torch.softmax(model(x), -1)
    for row in frame.itertuples():
        assert row.prediction == int(prob[row.index].argmax()) and row.label == int(y[row.index])
        assert row.confidence == pytest.approx(float(prob[row.index].max()), abs=UNCHANGED)
        assert row.correct == (row.prediction == row.label)
        size = collision_size(model, "2", x[row.index], config=CONFIG.geometry)  # the oracle: one set alone
        assert (row.dim, row.radius) == (size.dim, pytest.approx(size.radius, abs=1e-9)) and row.exact


def test_the_spread_is_the_valid_vertices_mean_distance(scanned):
    frame, _ = scanned
    model, (x, _) = _model(), _data()
    row = frame.iloc[0]
    poly = collide.find_polytope(model, "2", x[int(row["index"])], n_vertices=3, method="gradient",
                                 config=CONFIG.gradient)
    assert row["valid_vertices"] == int(poly.valid.sum())
    assert row["spread"] == pytest.approx(avg_pairwise_distance(poly.vertices[poly.valid]), rel=1e-6)


def test_certify_measures_the_most_and_least_blind(scanned):
    frame, _ = scanned
    certified = frame[frame["width_directions"] > 0]
    assert list(certified["rank"]) == [1, len(frame)]
    assert (certified["mean_width"] > 0).all() and certified["mean_width_se"].notna().all()
    assert frame.loc[frame["width_directions"] == 0, "mean_width"].isna().all()


def test_a_rerun_reads_every_chunk_back_and_recomputes_a_changed_one(scanned, monkeypatch):
    frame, store = scanned
    x, y = _data()

    def never(*args, **kwargs):
        raise AssertionError("a finished scan computed again")

    monkeypatch.setattr("collide.audit.find_polytopes", never)
    monkeypatch.setattr("collide.audit.collision_size", never)
    monkeypatch.setattr("collide.audit.collision_geometry", never)
    again = collide.scan(_model(), "2", x, labels=y, config=CONFIG, store=store)
    pd.testing.assert_frame_equal(again, frame)
    changed = x.clone()
    changed[5] = 1 - changed[5]
    with pytest.raises(AssertionError, match="computed again"):  # the second chunk holds example 5
        collide.scan(_model(), "2", changed, labels=y, config=CONFIG, store=store)


def test_a_dataset_and_a_dataloader_scan_like_the_batch(scanned):
    frame, _ = scanned
    x, y = _data()
    config = ScanConfig(n_vertices=3, gradient=CONFIG.gradient, chunk=4, exact="never")
    batch = collide.scan(_model(), "2", x, labels=y, config=config)
    assert set(batch["rank_by"]) == {"spread"} and batch["reason"].str.contains("exact=never").all()
    assert list(batch.sort_values("index")["spread"]) == pytest.approx(list(frame.sort_values("index")["spread"]))
    for data in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=4)):
        pd.testing.assert_frame_equal(collide.scan(_model(), "2", data, config=config), batch)


def test_exact_sets_measured_side_by_side_are_the_ones_measured_one_at_a_time(tmp_path):
    x, y = _data()
    config = ScanConfig(n_vertices=3, gradient=collide.GradientConfig(max_steps=1000), chunk=4, certify=2)
    one = collide.scan(_model(), "2", x, labels=y, config=dataclasses.replace(config, threads=1), store=tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    two = collide.scan(_model(), "2", x, labels=y, config=dataclasses.replace(config, threads=2))
    pd.testing.assert_frame_equal(one, two)
    assert one["exact"].all() and (one["width_directions"] > 0).sum() == 4
    # The thread count is not part of a stored chunk's key: a rerun with another reads it back.
    again = collide.scan(_model(), "2", x, labels=y, config=dataclasses.replace(config, threads=2), store=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    pd.testing.assert_frame_equal(again, one)


def test_kept_centres_are_each_sets_ball_and_a_stored_chunk_keeps_them(tmp_path):
    x, y = _data()
    config = ScanConfig(n_vertices=3, gradient=collide.GradientConfig(max_steps=1000), chunk=4, centers=True)
    model = _model()
    frame = collide.scan(model, "2", x, labels=y, config=config, store=tmp_path)
    assert list(frame.columns) == [*COLUMNS, "center", "pinned", "pinned_weights"]
    assert frame["pinned"].isna().all()  # none of these sets is flat
    w, b = (t.detach().double().numpy() for t in (model[1].weight, model[1].bias))
    for row in frame.itertuples():
        size = collision_size(model, "2", x[row.index], config=config.geometry)
        assert np.array_equal(np.asarray(row.center), size.center) and size.center.shape == (36,)
        # Oracle, in numpy from the weights: the ball of the stored centre and radius within
        # the flat where the active units keep their values lies in the set. On the flat
        # (projector p), a row a·x ≤ b holds on the ball iff a·c + r‖p a‖ ≤ b.
        t = x[row.index].flatten().double().numpy()
        active = w @ t + b > 0
        p = np.eye(36) - np.linalg.pinv(w[active]) @ w[active]
        c, r = size.center, row.radius
        assert np.allclose(w[active] @ c, w[active] @ t, atol=1e-9)  # the active units' values kept
        assert (w[~active] @ c + b[~active] + r * np.linalg.norm(w[~active] @ p, axis=1) <= 1e-9).all()
        reach = np.linalg.norm(p, axis=0)  # of each pixel's face
        assert (c - r * reach >= -1e-9).all() and (c + r * reach <= 1 + 1e-9).all()
    again = collide.scan(model, "2", x, labels=y, config=config, store=tmp_path)  # read back from the chunks
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(frame["center"], again["center"],
                                                                             strict=True))


def test_examples_without_a_polytope_say_why_and_rank_last():
    x, y = _data(3)
    frame = collide.scan(_model(), "2", x, labels=y, config=ScanConfig(n_vertices=12, exact="never"))
    assert frame["reason"].str.contains("fewer than n_vertices=12").all() and frame["spread"].isna().all()
    assert (frame["valid_vertices"] == 0).all()


class _Residual(nn.Module):
    """The input reaches the output around ``relu`` (added back after fc2)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.fc1, self.relu, self.fc2, self.out = nn.Linear(36, 36), nn.ReLU(), nn.Linear(36, 36), nn.Linear(36, 4)

    def forward(self, x):
        x = x.flatten(1)
        return self.out(self.fc2(self.relu(self.fc1(x))) + x)


def test_a_scan_at_a_layer_a_skip_passes_by_says_so(caplog):
    x, y = _data(2)
    quick = ScanConfig(n_vertices=3, exact="never", gradient=collide.GradientConfig(max_steps=50))
    assert collide.scan(_model(), "2", x, labels=y, config=quick).attrs["layer_passed_by"] is False
    with caplog.at_level("WARNING", logger="collide.audit"):
        frame = collide.scan(_Residual().eval(), "relu", x, labels=y, config=quick)
    assert frame.attrs["layer_passed_by"] is True
    assert "layer relu: a skip connection passes it by" in caplog.text


def test_bad_input_is_refused_by_name():
    x, y = _data(3)
    with pytest.raises(DataError, match="3 examples but 2 labels"):
        collide.scan(_model(), "2", x, labels=y[:2])
    with pytest.raises(DataError, match="holds no example"):
        collide.scan(_model(), "2", x[:0])
    with pytest.raises(DataError, match="NaN or infinite values"):
        collide.scan(_model(), "2", torch.full_like(x, math.nan))
    with pytest.raises(DataError, match=r"example 1 has label 4, but the model has 4 classes \(0 to 3\)"):
        collide.scan(_model(), "2", x, labels=torch.tensor([0, 4, 1]), config=ScanConfig(exact="never"))
    with pytest.raises(DataError, match="example 0 has label -1"):
        collide.scan(_model(), "2", x, labels=torch.tensor([-1, 0, 1]), config=ScanConfig(exact="never"))
    with pytest.raises(ConfigError, match="rank_by"):
        ScanConfig(rank_by="volume")
    with pytest.raises(ConfigError, match="exact=always"):
        tanh = nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.Tanh(), nn.Linear(12, 4))
        collide.scan(tanh, "2", x, config=ScanConfig(exact="always"))


def test_rank_stability_ranks_by_the_sizes_compared_over_the_examples_both_ranked():
    from scipy import stats

    from collide.audit import rank_stability

    rng = np.random.default_rng(0)
    a = pd.DataFrame({"index": np.arange(200), "size": rng.random(200)})
    b = pd.DataFrame({"index": np.arange(200), "size": a["size"] + 0.3 * rng.random(200)})
    b.loc[[3, 7], "size"] = np.nan  # no size: left out of both
    # A rank column by some other size must not matter.
    a["rank"], b["rank"] = np.arange(1, 201), np.arange(200, 0, -1)
    got = rank_stability(a, b.iloc[::-1], top=0.05)
    kept = a.index.difference([3, 7])
    assert got["examples"] == 198 and got["top_k"] == 10
    rho = stats.spearmanr(a.loc[kept, "size"], b.loc[kept, "size"]).statistic
    assert abs(got["spearman"] - rho) <= 1e-12
    top_a = set(a.loc[kept].nlargest(10, "size")["index"])
    top_b = set(b.loc[kept].nlargest(10, "size")["index"])
    assert got["top_overlap"] == len(top_a & top_b) / 10
    same = rank_stability(a, a.assign(size=2 * a["size"] + 1), top=0.1)
    assert same["spearman"] == pytest.approx(1.0) and same["top_overlap"] == 1.0


def test_progress_moves_with_each_examples_exact_sizes_not_only_with_each_chunk():
    x, y = _data()
    config = ScanConfig(n_vertices=3, gradient=collide.GradientConfig(max_steps=50), chunk=4)
    heard = []
    collide.scan(_model(), "2", x, labels=y, config=config, progress=lambda done, total: heard.append((done, total)))
    # chunks of 4 and 2: each example's sizes heard of as they come, in order, each once
    assert heard == [(k, 6) for k in range(1, 7)]
