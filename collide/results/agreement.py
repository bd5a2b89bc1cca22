"""Whether a table reproduces a reference table: every column that does not measure time.

The published tables (``data/reference/``) are what ``make run`` writes from the shipped
checkpoints. A run elsewhere should give the same table; where it cannot be the same bits
the tolerance says how far a column may move, and why:

- integers, strings and flags (valid vertices, N⁺, the set's dimension, the classes) are
  equal, or the result changed;
- the exact rows' numbers come from LPs solved in float64 on the same float64 rows: they
  agree to the LPs' tolerance (:data:`EXACT`);
- a gradient or paper vertex is the end of thousands of float32 steps: another CPU's
  kernels (AVX2 against AVX-512) round each step differently, and the last bits of a
  step can move where the solver stops; :data:`GRADIENT` is the measured bound, with its
  margin;
- the collision set's sample statistics are Monte Carlo estimates: within their own
  standard error when the table gives one, else :data:`SAMPLED`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from collide.errors import DataError

# Columns that measure the machine, not the result, and columns that name files or code.
_SKIPPED_SUFFIXES = ("_seconds",)
_SKIPPED = frozenset({"config_digest", "repaired", "solved", "evaluated", "experiment"})  # experiment: a run's name


@dataclass(frozen=True)
class Tolerance:
    """``|a − b| ≤ atol + rtol·|b|``, and why a column may move that much."""

    rtol: float
    atol: float
    why: str

    def holds(self, value: float, reference: float) -> bool:
        if math.isnan(value) or math.isnan(reference):
            return math.isnan(value) and math.isnan(reference)
        if math.isinf(value) or math.isinf(reference):
            return value == reference
        return abs(value - reference) <= self.atol + self.rtol * abs(reference)


EXACT = Tolerance(1e-6, 1e-9, "LP optima in float64 (HiGHS meets its rows to 1e-9)")
# Measured: make run's gradient and paper rows from the shipped
# MLP with AVX2 kernels forced (ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2)
# against AVX-512 moved a vertex by up to 0.06 (L2), distances by up to 0.4%, a feature
# error by up to 8e-4, a non-positive unit by up to 6e-3 and a probability by 2.5e-7; an
# H200 GPU moved them by 0.06%, 2.5e-4, 3e-3 and 1.5e-7. Another Xeon with AVX-512 and
# torch 2.11 gave the same bits. Each bound below is the largest of these with a margin.
GRADIENT = Tolerance(1e-2, 1e-6, "float32 steps rounded by another CPU's kernels (measured: 0.4% with AVX2)")
# A solver stops as its feature error crosses the criterion, so the error itself moves by
# an absolute amount around 1e-2, not a relative one.
GRADIENT_ERROR = Tolerance(0.0, 2e-3, "where a float32 solver stops near its criterion (measured: 8e-4)")
GRADIENT_NONPOSITIVE = Tolerance(0.0, 1e-2, "a non-positive unit's slack at the solver's stop (measured: 6e-3)")
# An exact row's feature errors are float32 forwards of points of C: rounding, near 1e-7
# (measured: 3.7e-7 on the CPU, 4.1e-7 on an H200 for the same samples).
EXACT_ERROR = Tolerance(0.0, 2e-7, "a float32 forward's rounding at a point of C (measured: 4e-8 CPU to GPU)")
SAMPLED = Tolerance(5e-2, 1e-9, "a Monte Carlo estimate without a stated standard error")
PROBABILITY = Tolerance(0.0, 1e-5, "a softmax probability of a float32 model (measured: 2.5e-7)")
# The collision set's certified sizes are LP optima; its dimension is an integer.
_CERTIFIED = frozenset({"region_dim", "region_free_dim", "region_radius", "region_mean_width", "region_mean_width_se"})


def tolerance_for(column: str, method: str) -> Tolerance:
    """The tolerance of ``column`` in a row of ``method`` (``gradient``, ``exact``, ``paper``)."""
    if column.endswith("_prob"):
        return PROBABILITY
    if column.startswith("region_") and column not in _CERTIFIED:
        return SAMPLED
    if method == "exact":
        return EXACT_ERROR if "rel_error" in column else EXACT
    if "rel_error" in column:
        return GRADIENT_ERROR
    if column == "max_nonpositive":
        return GRADIENT_NONPOSITIVE
    return GRADIENT


def compare_tables(reference: pd.DataFrame, table: pd.DataFrame, *,
                   key: tuple[str, ...] = ("row",)) -> list[str]:
    """Every way ``table`` fails to reproduce ``reference``; empty when it does.

    Rows are matched by ``key``; a column the reference has and the table lacks is a
    difference, a new column is not (a newer collide may add columns). Columns that
    measure time (``*_seconds``) and the config's digest are not compared.
    """
    for frame, what in ((reference, "the reference"), (table, "the table")):
        missing = [k for k in key if k not in frame.columns]
        if missing:
            raise DataError(
                f"{what} has no {', '.join(map(repr, missing))} column: it is not a table of rows (a summary, "
                "whose columns are statistics over an experiment's rows) and has no tolerance to be compared "
                "within; collide compare checks tables of rows, such as data/reference/mnist-mlp.parquet against "
                "data/results/mnist.parquet (data/reference/README.md says which reference each run writes)")
    other = _other_problem(reference, table)
    if other:
        return other
    problems: list[str] = []
    if len(reference) != len(table):
        problems.append(f"{len(table)} rows against the reference's {len(reference)}")
    ref = {tuple(r[k] for k in key): r for r in reference.to_dict("records")}
    got = {tuple(r[k] for k in key): r for r in table.to_dict("records")}
    for k in sorted(set(ref) - set(got)):
        problems.append(f"row {k}: in the reference, not in the table")
    for k in sorted(set(ref) & set(got)):
        problems += [f"row {k[0] if len(k) == 1 else k}: {p}" for p in compare_rows(ref[k], got[k])]
    return problems


# What a table is of: where these differ, the rows answer another question, and listing
# every column of every row would bury that one fact. (Not the experiment's name, which a
# run may choose, nor the checkpoint's or the data's digest: a table from a checkpoint
# trained elsewhere is what the comparison is for.)
_PROBLEM = ("model", "layer", "dataset")


def _other_problem(reference: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """How the two tables' problems differ (another model, layer or dataset),
    each as one line; empty where they are of the same problem."""
    out = []
    for column in _PROBLEM:
        if column in reference and column in table:
            want, have = sorted(map(str, reference[column].unique())), sorted(map(str, table[column].unique()))
            if want != have:
                out.append(f"{column}: {', '.join(have)} against the reference's {', '.join(want)}: the table is "
                           "of another problem, so its rows were not compared (compare it with that problem's "
                           "reference)")
    return out


def compare_rows(reference: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    """How one row differs from its reference row, column by column."""
    method = str(reference.get("method", ""))
    out = []
    for column, want in reference.items():
        if column in _SKIPPED or column.endswith(_SKIPPED_SUFFIXES):
            continue
        if column not in row:
            out.append(f"{column}: missing (reference {want!r})")
            continue
        have = row[column]
        if _is_float(want) and _is_number(have):
            tol = tolerance_for(column, method)
            if not tol.holds(float(have), float(want)):
                out.append(f"{column}: {float(have):.6g} against the reference's {float(want):.6g} "
                           f"(tolerance rtol {tol.rtol:g}, atol {tol.atol:g}: {tol.why})")
        elif not _same(want, have):
            out.append(f"{column}: {have!r} against the reference's {want!r}")
    return out


def _is_float(value: Any) -> bool:
    """A float compares within a tolerance; integers, flags and strings must be equal."""
    return isinstance(value, float) or getattr(getattr(value, "dtype", None), "kind", "") == "f"


def _is_number(value: Any) -> bool:
    return _is_float(value) or (isinstance(value, int) and not isinstance(value, bool))


def _same(a: Any, b: Any) -> bool:
    missing_a = a is None or (isinstance(a, float) and math.isnan(a))
    missing_b = b is None or (isinstance(b, float) and math.isnan(b))
    if missing_a or missing_b:
        return missing_a and missing_b
    return bool(a == b)
