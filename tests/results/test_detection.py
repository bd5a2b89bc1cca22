"""AUROC, precision at k and their intervals against plain-numpy oracles."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from collide.results.detection import (
    DETECTION_COLUMNS,
    auroc,
    bootstrap_auroc,
    bootstrap_mean_auroc,
    detection_summary,
    precision_at_k,
    t_interval,
)
from tests.tolerances import RECHECK


def _pairwise_auroc(scores, positive) -> float:
    """The oracle: every (positive, negative) pair, ties counting half."""
    pos, neg = scores[positive], scores[~positive]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    return float(np.mean(wins))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_is_the_share_of_pairs_a_positive_wins_ties_half(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    positive = rng.random(40) < 0.3
    assert auroc(scores, positive) == pytest.approx(_pairwise_auroc(scores, positive), abs=RECHECK)


def test_auroc_extremes_chance_and_examples_without_a_score():
    positive = np.array([True, True, False, False, False])
    assert auroc(np.array([5.0, 4, 3, 2, 1]), positive) == 1.0
    assert auroc(np.array([1.0, 2, 3, 4, 5]), positive) == 0.0
    assert auroc(np.ones(5), positive) == 0.5
    # A NaN score leaves its example out (here the only negative above the positives).
    assert auroc(np.array([5.0, 4, np.nan, 2, 1]), positive) == 1.0
    assert math.isnan(auroc(np.ones(3), np.zeros(3, bool)))


def test_precision_at_k_counts_positives_among_the_top_k():
    scores = np.array([0.9, 0.1, 0.8, np.nan, 0.7, 0.2])
    positive = np.array([True, False, False, True, True, False])
    assert precision_at_k(scores, positive, 1) == 1.0
    assert precision_at_k(scores, positive, 2) == 0.5  # 0.9 (yes), 0.8 (no)
    assert precision_at_k(scores, positive, 3) == pytest.approx(2 / 3)
    assert precision_at_k(scores, positive, 4) == 0.5  # and 0.7 (yes), 0.2 (no)
    # k at or past the five with a score: their base rate whatever the score, so none (a new
    # user's trial: k=10 of 10 scanned read as a precision).
    assert math.isnan(precision_at_k(scores, positive, 5)) and math.isnan(precision_at_k(scores, positive, 99))


def test_the_bootstrap_interval_is_seeded_and_holds_the_estimate():
    rng = np.random.default_rng(3)
    positive = rng.random(60) < 0.4
    scores = rng.normal(size=60) + positive
    low, high = bootstrap_auroc(scores, positive, n_boot=300, seed=1)
    assert (low, high) == bootstrap_auroc(scores, positive, n_boot=300, seed=1)
    assert low < auroc(scores, positive) < high and 0 <= low and high <= 1


def test_the_t_interval_is_scipys():
    values = np.array([0.61, 0.72, 0.55, 0.68])
    expected = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert t_interval(values) == pytest.approx(expected, abs=RECHECK)
    assert all(math.isnan(v) for v in t_interval(np.array([0.5])))
    # Cut to the values a mean can take, and only there.
    wide = np.array([0.1, 0.95])
    raw = stats.t.interval(0.95, 1, loc=wide.mean(), scale=stats.sem(wide))
    assert raw[0] < 0 and raw[1] > 1
    assert t_interval(wide, within=(0.0, 1.0)) == (0.0, 1.0)
    assert t_interval(values, within=(0.0, 1.0)) == pytest.approx(expected, abs=RECHECK)


def test_the_summary_has_each_seeds_auroc_and_their_mean_with_a_t_interval():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"seed": np.repeat([0, 1, 2], 30), "hit": rng.random(90) < 0.3, "size": rng.random(90)})
    summary = detection_summary(frame, questions={"q": "hit"}, scores={"q": {"size": "size"}}, top_k=5, n_boot=50)
    assert list(summary.columns) == list(DETECTION_COLUMNS) and list(summary["seed"]) == [0, 1, 2, -1]
    per_seed = [auroc(p["size"].to_numpy(), p["hit"].to_numpy()) for _, p in frame.groupby("seed")]
    assert summary["auroc"].iloc[:3].tolist() == pytest.approx(per_seed, abs=RECHECK)
    mean = summary.iloc[3]
    assert mean["auroc"] == pytest.approx(np.mean(per_seed), abs=RECHECK)
    assert (mean["auroc_low"], mean["auroc_high"]) == pytest.approx(
        np.clip(stats.t.interval(0.95, 2, loc=np.mean(per_seed), scale=stats.sem(per_seed)), 0, 1).tolist(),
        abs=RECHECK)
    assert mean["interval"] == "t over seeds" and set(summary["interval"].iloc[:3]) == {"bootstrap"}


def test_the_t_interval_over_seeds_of_an_auroc_is_cut_to_zero_and_one():
    # Seed 0 ranks every hit first (AUROC 1), seeds 1 and 2 nearly so: the t-interval of
    # three such AUROCs reaches past 1, and an AUROC cannot.
    hit = np.tile([True, False, False, False], 5)
    perfect = np.where(hit, 1.0, 0.0) + np.linspace(0, 0.1, 20)
    swapped = perfect.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # one hit below one miss
    frame = pd.DataFrame({"seed": np.repeat([0, 1, 2], 20), "hit": np.tile(hit, 3),
                          "size": np.concatenate([perfect, swapped, perfect - np.where(hit, 0.95, 0.0)])})
    summary = detection_summary(frame, questions={"q": "hit"}, scores={"q": {"size": "size"}}, top_k=5, n_boot=50)
    mean = summary.iloc[3]
    raw_low, raw_high = t_interval(summary["auroc"].iloc[:3].to_numpy())
    assert raw_high > 1 and mean["auroc_high"] == 1.0
    assert mean["auroc_low"] == pytest.approx(max(0.0, raw_low), abs=RECHECK)


def test_the_bootstrap_of_the_mean_over_seeds_holds_it_and_is_one_seeds_bootstrap_for_one_seed():
    rng = np.random.default_rng(4)
    groups = []
    for _ in range(3):
        positive = rng.random(30) < 0.4
        groups.append((rng.normal(size=30) + positive, positive))
    low, high = bootstrap_mean_auroc(groups, n_boot=200, seed=2)
    assert low < np.mean([auroc(s, p) for s, p in groups]) < high
    assert bootstrap_mean_auroc(groups[:1], n_boot=200, seed=2) == bootstrap_auroc(*groups[0], n_boot=200, seed=2)
