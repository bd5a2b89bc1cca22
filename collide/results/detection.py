"""How well a score singles out a set of examples: AUROC, precision at k, and their intervals.

The paper's §5 experiments ask whether a collision size picks out some examples (flipped
labels, misclassified ones) better than the obvious scores (training loss, confidence).
Each question is a score per example and a yes/no per example; these are the numbers
that answer it, with the intervals that say how far to trust them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

CONFIDENCE = 0.95


def _clean(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The examples with a finite score (an example without the size cannot be ranked by it)."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(f"expected one score per example, got shapes {scores.shape} and {positive.shape}")
    keep = np.isfinite(scores)
    return scores[keep], positive[keep]


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The chance that a random positive example scores above a random negative one (ties
    count half): the Mann-Whitney U over n₊·n₋. 0.5 is no better than chance; NaN when
    either class is empty. Examples with a NaN score are left out.

    Shapes:
        scores, positive: (N,)
    """
    scores, positive = _clean(scores, positive)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(scores)  # average ranks: ties count half
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def precision_at_k(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """The share of positives among the ``k`` highest scores (ties by position: a stable
    sort). NaN for no example with a score, and where ``k`` reaches every example: the
    share is then the base rate, whatever the score, and singles nothing out."""
    scores, positive = _clean(scores, positive)
    if len(scores) == 0 or k < 1 or k >= len(scores):
        return math.nan
    top = np.argsort(-scores, kind="stable")[:k]
    return float(positive[top].mean())


def bootstrap_mean_auroc(groups: list[tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000, seed: int = 0,
                         confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean of each group's :func:`auroc` (a group: one
    seed's scores and positives), each group's positives and negatives resampled within it:
    how far the examples scanned move the mean, the models held fixed."""
    pairs = []
    for scores, positive in groups:
        scores, positive = _clean(scores, positive)
        if positive.any() and (~positive).any():
            pairs.append((scores[positive], scores[~positive]))
    if not pairs:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        values = []
        for pos, neg in pairs:
            labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
            values.append(auroc(np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))], labels))
        draws.append(np.mean(values))
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_auroc(scores: np.ndarray, positive: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A percentile bootstrap interval of :func:`auroc`, positives and negatives resampled
    each within its own class (their counts stay fixed, as in the scanned subset)."""
    scores, positive = _clean(scores, positive)
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    draws = [auroc(np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))], labels) for _ in range(n_boot)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE, *,
               within: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """The two-sided t-interval of the mean of ``values`` (NaN values left out; NaN for
    fewer than two), cut to ``within``: the values the mean can take (a rate's [0, 1], a
    size's [0, inf)). Few draws make the interval wide, and past those bounds it would
    claim means that cannot be."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean, sem = float(values.mean()), float(values.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return max(mean - half, within[0]), min(mean + half, within[1])


# The detection summary's columns, in order.
DETECTION_COLUMNS = ("question", "score", "seed", "examples", "positives", "auroc", "auroc_low", "auroc_high",
                     "interval", "boot_low", "boot_high", "k", "precision_at_k", "base_rate")


def _mean(values: Any) -> float:
    """The mean of the finite values (NaN for none: a size no example of any seed has)."""
    values = np.asarray(values, dtype=float)
    return float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else math.nan


def detection_summary(frame: pd.DataFrame, *, questions: dict[str, str], scores: dict[str, dict[str, str]],
                      top_k: int, n_boot: int, seed: int = 0) -> pd.DataFrame:
    """How well each score singles out each question's positives, per seed and over seeds.

    Args:
        frame: one line per (seed, example) with a ``seed`` column, a boolean column per
            question and a numeric column per score (higher: more suspect).
        questions: question name -> the boolean column of its positives.
        scores: question name -> {score name: column}.
        top_k: k of the precision at k.
        n_boot: bootstrap resamples of each seed's AUROC interval.

    Returns:
        One line per (question, score, seed) with the AUROC and its percentile bootstrap
        interval over examples (``interval``: ``bootstrap``; the same in ``boot_low``,
        ``boot_high``), and one line per (question, score) with ``seed`` -1: the mean over
        seeds with its t-interval over seeds, cut to [0, 1] (``interval``: ``t over seeds``:
        what another training seed moves) and, in ``boot_low``, ``boot_high``, the percentile bootstrap
        of that mean over the examples (:func:`bootstrap_mean_auroc`: what other examples
        move); :data:`DETECTION_COLUMNS`.
    """
    lines = []
    for question, column in questions.items():
        for name, score in scores[question].items():
            per_seed = []
            for s, part in frame.groupby("seed", sort=True):
                values, positive = part[score].to_numpy(float), part[column].to_numpy(bool)
                low, high = bootstrap_auroc(values, positive, n_boot=n_boot, seed=seed + int(s))
                line = {"question": question, "score": name, "seed": int(s), "examples": int(np.isfinite(values).sum()),
                        "positives": int(positive[np.isfinite(values)].sum()), "auroc": auroc(values, positive),
                        "auroc_low": low, "auroc_high": high, "interval": "bootstrap", "boot_low": low,
                        "boot_high": high, "k": top_k,
                        "precision_at_k": precision_at_k(values, positive, top_k),
                        "base_rate": float(positive[np.isfinite(values)].mean()) if np.isfinite(values).any()
                        else math.nan}
                per_seed.append(line)
            lines += per_seed
            aurocs = np.array([p["auroc"] for p in per_seed])
            # An AUROC lies in [0, 1]; a t-interval from three seeds can reach past either end.
            low, high = t_interval(aurocs, within=(0.0, 1.0))
            groups = [(part[score].to_numpy(float), part[column].to_numpy(bool))
                      for _, part in frame.groupby("seed", sort=True)]
            boot_low, boot_high = bootstrap_mean_auroc(groups, n_boot=n_boot, seed=seed)
            lines.append({"question": question, "score": name, "seed": -1,
                          "examples": sum(p["examples"] for p in per_seed),
                          "positives": sum(p["positives"] for p in per_seed),
                          "auroc": _mean(aurocs), "auroc_low": low, "auroc_high": high, "interval": "t over seeds",
                          "boot_low": boot_low, "boot_high": boot_high, "k": top_k,
                          "precision_at_k": _mean([p["precision_at_k"] for p in per_seed]),
                          "base_rate": _mean([p["base_rate"] for p in per_seed])})
    return pd.DataFrame(lines, columns=list(DETECTION_COLUMNS))


def draw_detection(summary: pd.DataFrame, frame: pd.DataFrame, *, scatter: tuple[str, str, str],
                   title: str) -> Figure:
    """Left, one panel per question: each score's AUROC per seed (dots) and over seeds
    (black: mean and t-interval), chance at 0.5. Right: ``scatter = (x, y, positive)``,
    the examples of every seed, positives in red."""
    questions = list(dict.fromkeys(summary["question"]))
    fig = Figure(figsize=(5.2 * (len(questions) + 1), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(questions) + 1))
    for ax, question in zip(axes, questions, strict=False):
        part = summary[summary["question"] == question]
        names = list(dict.fromkeys(part["score"]))
        for x, name in enumerate(names):
            rows = part[part["score"] == name]
            seeds = rows[rows["seed"] >= 0]
            ax.scatter(np.full(len(seeds), x - 0.12), seeds["auroc"], s=14, color="C0", alpha=0.7,
                       label="one seed" if x == 0 else None)
            mean = rows[rows["seed"] < 0].iloc[0]
            if np.isfinite(mean["auroc_low"]):
                ax.errorbar(x + 0.12, mean["auroc"], yerr=[[mean["auroc"] - mean["auroc_low"]],
                                                            [mean["auroc_high"] - mean["auroc"]]],
                            fmt="ko", capsize=3, markersize=4, label="mean, 95% t-interval" if x == 0 else None)
            else:
                ax.plot(x + 0.12, mean["auroc"], "ko", markersize=4)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_ylabel("AUROC")
        ax.set_title(question, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    x, y, positive = scatter
    ax = axes[-1]
    hit = frame[positive].astype(bool)
    ax.scatter(frame.loc[~hit, x], frame.loc[~hit, y], s=10, alpha=0.6, color="C0", label=f"not {positive}")
    ax.scatter(frame.loc[hit, x], frame.loc[hit, y], s=14, alpha=0.8, color="C3", label=positive)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig
