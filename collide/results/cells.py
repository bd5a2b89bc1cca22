"""How a table cell reads: probabilities, missing values, validity, success and row flags.

One place for the words and digits that the tables, figures, report and logs all show,
so that a row reads the same everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PROBABILITY_DECIMALS = 6  # enough to tell a typical 0.99996 from 1

# Each row flag: its short name in cells and titles, and what it means for the row.
FLAGS = {
    "random-weights": ("random weights", "the model was never trained: its predictions, hence the "
                       "success rate and probabilities, say nothing about a real network"),
    "uninformative-model": ("uninformative model", "the model gives every input one class at about "
                            "chance probability: a success rate of 1 is trivial"),
    "hull-not-collision": ("hull is no collision", "the samples of the valid vertices' hull miss the "
                           "method's feature-error criterion (samples_max_feature_rel_error > rel_tol; "
                           "possible past a first layer): its success rate measures the hull, not a collision"),
    "set-samples-not-mixed": ("set samples not mixed", "the collision set's sampler did not reach R-hat <= 1.01 "
                              "and ESS >= 400 within its budget: the sample statistics are withheld (n/a, with "
                              "region_sampler_reason; in a row of the set's samples, their success rate and "
                              "distances, with invalid_reason); the certified sizes (radius, mean width) stand"),
}
# The flag of a row whose collision set's sampler did not mix.
SET_NOT_MIXED = "set-samples-not-mixed"
assert SET_NOT_MIXED in FLAGS

# Flags that qualify other columns than the success rate (the collision set's sample
# statistics): a row's summary names them after its numbers, not beside its success rate,
# which they leave as it is.
BESIDE_SUCCESS_NOT = frozenset({"set-samples-not-mixed"})


def missing(value: Any) -> bool:
    """None or NaN: how a cell reads when a row has no value (or an older store no column)."""
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def format_probability(p: Any) -> str:
    """:data:`PROBABILITY_DECIMALS` decimals; a value below 1 that would print as 1 reads "1 - 4.0e-07"."""
    if missing(p):
        return "n/a"
    p = float(p)
    if p in (0.0, 1.0):
        return f"{p:.0f}"
    text = f"{p:.{PROBABILITY_DECIMALS}f}"
    return f"1 - {1 - p:.1e}" if float(text) == 1.0 else text


def row_flags(metrics: Mapping[str, Any]) -> list[str]:
    """The row's flags (``flags``, comma-separated), with ``random_weights`` for older stores."""
    raw = metrics.get("flags")
    flags = [f.strip() for f in raw.split(",") if f.strip()] if isinstance(raw, str) else []
    source = metrics.get("model_source")
    random = _true(metrics.get("random_weights")) or (isinstance(source, Mapping) and _true(source.get("random")))
    if random and "random-weights" not in flags:
        flags.append("random-weights")
    return flags


def _true(value: Any) -> bool:
    return not missing(value) and bool(value)


def flag_text(flag: str) -> str:
    return FLAGS[flag][0] if flag in FLAGS else flag.replace("-", " ")


def success_text(metrics: Mapping[str, Any]) -> str:
    """The success rate, "n/a: <why>" where there is none, and beside it the row's flags that
    qualify it (all but :data:`BESIDE_SUCCESS_NOT`)."""
    rate = metrics.get("success_rate")
    if missing(rate):
        reason = metrics.get("invalid_reason")
        text = f"n/a: {reason}" if isinstance(reason, str) and reason else "n/a"
    else:
        text = format_probability(rate)
    flags = [f for f in row_flags(metrics) if f not in BESIDE_SUCCESS_NOT]
    return f"{text} [{', '.join(flag_text(f) for f in flags)}]" if flags else text


def other_flags_text(metrics: Mapping[str, Any]) -> str:
    """``"; flagged: set samples not mixed"``: the row's flags :func:`success_text` leaves out."""
    flags = [flag_text(f) for f in row_flags(metrics) if f in BESIDE_SUCCESS_NOT]
    return f"; flagged: {', '.join(flags)}" if flags else ""


def vertex_pairs(metrics: Mapping[str, Any]) -> int | None:
    """How many vertex pairs ``vertex_avg_distance`` averages: ``vertex_pairs``, or for stores that
    predate it n_valid·(n_valid−1)/2 from ``valid_vertices``; None where neither is known."""
    pairs = metrics.get("vertex_pairs")
    if missing(pairs):
        valid = metrics.get("valid_vertices")
        return None if missing(valid) else int(valid) * (int(valid) - 1) // 2
    return int(pairs)


def pairs_text(metrics: Mapping[str, Any]) -> str:
    """" (1 pair)", " (10 pairs)": what a spread rests on, printed beside it; "" where unknown."""
    pairs = vertex_pairs(metrics)
    return "" if pairs is None else f" ({pairs} pair{'' if pairs == 1 else 's'})"


def valid_text(metrics: Mapping[str, Any]) -> str:
    """``k/V`` valid vertices, or "?" for rows evaluated before validity was recorded; for a
    row of points (``n_vertices`` 0: a baseline's, the frontier's) "none (points)", or the
    valid vertices its points came from ("points of 5")."""
    valid, total = metrics.get("valid_vertices"), metrics.get("n_vertices")
    if not missing(total) and int(total) == 0:
        return "none (points)" if missing(valid) else f"points of {int(valid)}"
    if missing(valid):
        return "?"
    return f"{int(valid)}/{'?' if missing(total) else int(total)}"


# The columns that may tell one run's rows apart, in the order a row's line names them.
TELLING_APART = ("model", "layer", "activation", "saturation_tol", "penalty", "seed", "partner", "target_index")


def row_summary(metrics: Mapping[str, Any], apart: Sequence[str] = ()) -> str:
    """One line of a row's table record for logs: method, validity, success, size, error;
    ``apart``: the columns that tell it from the other rows of its run, named beside its method."""

    def number(key: str, fmt: str) -> str:
        value = metrics.get(key)
        return "n/a" if missing(value) else format(float(value), fmt)

    init = f", init={metrics['init']}" if metrics.get("init") else ""
    # Transfer evaluates one set of points under two models: without the model its two rows
    # of a target read alike.
    under = f", under {metrics['evaluated_under']}: {metrics.get('model')}" if metrics.get("evaluated_under") else ""
    success, error = f"success rate {success_text(metrics)}", f"feature error {number('max_feature_rel_error', '.1e')}"
    # A row evaluated before its table carried a column (reused beside new rows) names none.
    told = [f"{k} {_told(metrics[k])}" for k in apart if k in metrics and not (k == "model" and under)]
    head = f"row {metrics.get('row')} ({metrics.get('method')}{init}{under}{'; ' if told else ''}{', '.join(told)})"
    if metrics.get("n_vertices") == 0:
        # A row of sampled points with no vertices of its own (a baseline): no vertex distance.
        valid = metrics.get("valid_vertices")
        points = "points" + ("" if missing(valid) else f" from {int(valid)} valid vertices")
        return f"{head}: {points}; {success}; {error}{other_flags_text(metrics)}"
    return (f"{head}: {valid_text(metrics)} vertices valid; {success}; "
            f"vertex distance {number('vertex_avg_distance', '.3f')}{pairs_text(metrics)}; {error}"
            f"{other_flags_text(metrics)}")


def reused(metrics: Mapping[str, Any]) -> bool:
    """Whether a run took the row as it found it: neither solved nor evaluated again."""
    return not (metrics["solved"] or metrics["evaluated"])


def _told(value: Any) -> str:
    return "none" if missing(value) else format(value, "g") if isinstance(value, float) else str(value)


def run_lines(rows: list[Mapping[str, Any]]) -> list[str]:
    """What a run says of its rows, the flow in its log and ``--no-prefect`` on the terminal:
    each row's summary, computed or reused, then how many were reused. Where method and init
    do not tell its rows apart, the columns of :data:`TELLING_APART` that differ between
    them do (an activation and its tolerance, a penalty, a training seed, a layer)."""
    apart = [k for k in TELLING_APART if len({_told(m[k]) for m in rows if k in m}) > 1]
    lines = [f"{row_summary(m, apart)}: {'reused' if reused(m) else 'computed'}" for m in rows]
    return [*lines, f"{sum(reused(m) for m in rows)} of {len(rows)} rows were already finished and reused"]
