"""The published result tables, written from the committed reference tables, never typed.

``data/reference/`` holds the tables that ``make reference`` has the pipeline write from
the shipped checkpoints. A documentation page marks each generated block

    <!-- generated: NAME -->
    ...
    <!-- end generated -->

and :func:`render` fills every block from those files when the site is built
(``make docs``), so a number on a results page is a number in a committed table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from collide.results.cells import format_probability, missing, pairs_text, row_flags, valid_text
from collide.results.reference import TABLE_2
from collide.results.summary import baseline_summary

_BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def _num(value: Any, fmt: str) -> str:
    return "n/a" if missing(value) else format(float(value), fmt)


def _markdown(header: str, rows: Iterable[str], *, caption: str = "") -> str:
    """A markdown table: ``header`` (``| a | b |``), its rule, then ``rows``, under an
    optional italic ``caption``."""
    n = header.count("|") - 1
    lines = [f"_{caption}._", ""] if caption else []
    return "\n".join([*lines, header, "|" + "---|" * n, *rows]) + "\n"


def _err(value: Any) -> str:
    return "n/a" if missing(value) else f"{float(value):.1e}"


def _init(record: Mapping[str, Any]) -> str:
    return str(record.get("init", ""))


def _machine(frame: pd.DataFrame) -> str:
    """One line on what the rows were computed from, for the block's caption."""
    first = frame.iloc[0]
    return (f"{first['model']} at `{first['layer']}`, checkpoint `{str(first.get('model_sha256', ''))[:12]}` "
            f"({first.get('checkpoint_origin', '?')}, test accuracy {_num(first.get('test_accuracy'), '.4f')}), "
            f"target test image {first.get('target_index', '?')}")


def table2(frame: pd.DataFrame) -> str:
    """Table 2 as ``make run`` writes it, with the paper's two rows beneath."""
    header = ("| row | method | init | valid | success | target top-p | samples top-p | dataset avg dist "
              "| vertex avg dist (pairs) | max feature error | hull collides |")
    rows = []
    for r in frame.sort_values("row").to_dict("records"):
        flags = ", ".join(row_flags(r))
        rows.append(
            f"| {r['row']} | {r['method']} | {_init(r)} | {valid_text(r)} | {_success(r)} "
            f"| {format_probability(r['target_top_prob'])} | {format_probability(r['samples_top_prob'])} "
            f"| {_num(r['dataset_avg_distance'], '.2f')} | {_num(r['vertex_avg_distance'], '.2f')}{pairs_text(r)} "
            f"| {_err(r['max_feature_rel_error'])} | {_yes(r.get('hull_collides'))}{f' ({flags})' if flags else ''} |")
    for ref in TABLE_2:
        rows.append(
            f"| {ref.name} | gradient | {ref.setting} | 5 | {ref.success_rate:g} | {ref.target_top_prob:g} "
            f"| {ref.samples_top_prob:g} | {_num(ref.dataset_avg_distance, '.2f')} "
            f"| {ref.published_vertex_avg_distance:g} | - | - |")
    return _markdown(header, rows, caption=_machine(frame))


def collision_set(frame: pd.DataFrame) -> str:
    """The exact rows' collision sets beside their vertices' hulls."""
    exact = frame[frame["method"] == "exact"].sort_values("row").to_dict("records")
    if not exact:
        return "_No exact rows in the reference table._\n"
    header = "| | " + " | ".join(f"row {r['row']} (init {_init(r)})" for r in exact) + " |"
    lines: list[str] = []

    def row(label: str, cell: Callable[[Mapping[str, Any]], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in exact) + " |")

    row("N⁺ (positive units) / d − rank J⁺", lambda r: f"{_count(r.get('n_positive'))} / "
        f"{_count(r.get('region_free_dim'))}")
    row("dim C (how)", lambda r: f"{_count(r.get('region_dim'))} ({r.get('region_dim_method', '?')})")
    row("inscribed radius", lambda r: _num(r.get("region_radius"), ".4f"))
    row("mean width ± SE (directions)", lambda r: f"{_num(r.get('region_mean_width'), '.3f')} ± "
        f"{_num(r.get('region_mean_width_se'), '.3f')} ({_count(r.get('region_n_directions'))})")
    row("the 5 vertices' hull: mean width along the same directions", lambda r: _num(r.get("hull_mean_width"), ".3f"))
    row("samples: mean distance to the target", lambda r: _sampled(r, "region_mean_distance_to_target"))
    row("samples: mean pairwise distance", lambda r: _sampled(r, "region_spread"))
    row("sampler: R̂ max / ESS min", lambda r: f"{_num(r.get('region_rhat'), '.3f')} / "
        f"{_num(r.get('region_ess'), '.0f')}")
    row("samples' largest feature error", lambda r: _err(r.get("region_max_feature_rel_error")))
    return _markdown(header, lines, caption=_machine(frame))


def _sampled(record: Mapping[str, Any], column: str) -> str:
    value = record.get(column)
    if missing(value):
        reason = record.get("region_sampler_reason")
        return f"n/a ({reason})" if isinstance(reason, str) and reason else "n/a"
    return _num(value, ".3f")


def _count(value: Any) -> str:
    return "?" if missing(value) else str(int(value))


def _success(record: Mapping[str, Any]) -> str:
    rate = record.get("success_rate")
    return "n/a" if missing(rate) else format_probability(rate)


def _yes(value: Any) -> str:
    if missing(value):
        return "n/a"
    return "yes" if bool(value) else "**no**"


def lenet(frame: pd.DataFrame) -> str:
    """The LeNet-5 rows: validity, success, spread and why a row has no polytope."""
    header = ("| row | method | init | valid | success | vertex avg dist (pairs) "
              "| max feature error (all vertices) | hull collides (samples' error) | why |")
    rows = []
    for r in frame.sort_values("row").to_dict("records"):
        why = r.get("invalid_reason") if isinstance(r.get("invalid_reason"), str) else ""
        pairs = pairs_text(r) if not missing(r["vertex_avg_distance"]) else ""
        rows.append(f"| {r['row']} | {r['method']} | {_init(r)} | {valid_text(r)} | {_success(r)} "
                    f"| {_num(r['vertex_avg_distance'], '.2f')}{pairs} "
                    f"| {_err(r.get('max_feature_rel_error'))} ({_err(r.get('max_feature_rel_error_all'))}) "
                    f"| {_yes(r.get('hull_collides'))} ({_err(r.get('samples_max_feature_rel_error'))}) | {why} |")
    return _markdown(header, rows, caption=_machine(frame))


def _g(value: Any) -> str:
    return "n/a" if missing(value) else f"{float(value):.4g}"


def spread_paper(frame: pd.DataFrame) -> str:
    """The paper's Table 2 values against our range over training seeds and targets."""
    header = ("| paper row | our rows | column | paper | our range (min-max) | mean ± std | 95% CI of the mean | n "
              "| the paper's value |")
    rows = [f"| {r['paper_row']} | {r['method']}, init {r['init']} | {r['column']} | {r['paper']:g} "
            f"| {_g(r['min'])}-{_g(r['max'])} | {_g(r['mean'])} ± {_g(r['std'])} "
            f"| {_g(r['ci95_low'])}-{_g(r['ci95_high'])} | {int(r['n'])} "
            f"| {'inside our range' if r['in_range'] else '**outside our range**'} |"
            for r in frame.to_dict("records")]
    return _markdown(header, rows)


# One value per dataset or per target: no spread of their own to read in the summary.
_NO_SPREAD = ("dataset_avg_distance", "target_top_prob", "samples_top_prob")


def spread_summary(frame: pd.DataFrame) -> str:
    """Each size's spread: all draws, between training seeds and between targets."""
    header = ("| rows | column | n | mean | std | min-max | 95% CI of the mean | std between seeds "
              "| std between targets |")
    rows = [f"| {r['method']}, init {r['init']} | {r['column']} | {int(r['n'])} | {_g(r['mean'])} "
            f"| {_g(r['std'])} | {_g(r['min'])}-{_g(r['max'])} | {_g(r['ci95_low'])}-{_g(r['ci95_high'])} "
            f"| {_g(r['between_seed_std'])} | {_g(r['between_target_std'])} |"
            for r in frame.to_dict("records") if r["column"] not in _NO_SPREAD]
    return _markdown(header, rows)


def frontier(frame: pd.DataFrame) -> str:
    """The approximation frontier: for each ε, the point closest to the other digit."""
    first = frame.iloc[0]
    caption = (f"{first['model']} at `{first['layer']}`, checkpoint `{str(first.get('model_sha256', ''))[:12]}`, "
               f"target test image {first.get('target_index', '?')}, other digit test image "
               f"{first.get('init_index', '?')}")
    header = ("| ε | distance to the other digit | lower bound (convex inner set E ≤ ε) | distance to the target "
              "| feature error (float64) | class | p(target's class) |")
    rows = [f"| {r['epsilon']:g} | {_num(r['mean_distance_to_init'], '.3f')} "
            f"| {_num(r.get('distance_lower_bound_inner'), '.3f')} "
            f"| {_num(r['mean_distance_to_target'], '.3f')} "
            f"| {_err(r['max_feature_rel_error'])} | {int(r['pred_class'])} "
            f"| {format_probability(r.get('target_class_prob'))} |"
            for r in frame.sort_values("row").to_dict("records")]
    return _markdown(header, rows, caption=caption)


def _targets(r: dict[str, Any]) -> str:
    """``4``, or ``3 of 4`` where only 3 have a success rate (a summary from before the
    count has all of them)."""
    targets = int(r["targets"])
    scored = r.get("scored")
    return f"{int(scored)} of {targets}" if scored is not None and not pd.isna(scored) and scored < targets \
        else str(targets)


def baselines(frame: pd.DataFrame) -> str:
    """The baselines side by side, one row per method and layer, means over the targets."""
    header = ("| method @ layer | targets | success (target's class) | feature error max / mean "
              "| mean distance to the target | spread |")
    rows = [f"| {r['label']} | {_targets(r)} | {_num(r['success_rate'], '.3f')} "
            f"| {_err(r['max_feature_rel_error'])} / {_err(r['mean_feature_rel_error'])} "
            f"| {_num(r['mean_distance_to_target'], '.2f')} | {_num(r['points_spread'], '.2f')} |"
            for r in baseline_summary(frame).to_dict("records")]
    return _markdown(header, rows)


def transfer(frame: pd.DataFrame) -> str:
    """Collisions across models, one row per partner and row kind, means over the targets."""
    header = ("| model B | rows | targets | success (class kept) | max feature error | joint set: dim / radius / "
              "mean width | A's own dim |")
    rows = [f"| {r['partner']} | {r['kind']} | {_targets(r)} | {_num(r['success_rate'], '.3f')} "
            f"| {_err(r['max_feature_rel_error'])} | {_num(r['joint_dim'], '.0f')} / "
            f"{_num(r['joint_radius'], '.4f')} / {_num(r['joint_mean_width'], '.3f')} "
            f"| {_num(r['a_dim'], '.0f')} |"
            for r in frame.to_dict("records")]
    return _markdown(header, rows)


def activations(frame: pd.DataFrame) -> str:
    """The activations experiment's summary: per activation and saturation tolerance, the
    draws solved, the saturated units, and the solved polytopes' means over seeds x targets
    (with the spread between seeds and between targets of the vertex spread)."""
    header = ("| activation | saturation_tol | draws solved | saturated units: targets / test images (median) "
              "| valid vertices (mean) | vertex avg dist: mean (std between seeds, between targets) "
              "| success rate (mean) | samples' feature error (max) |")
    rows = []
    for (activation, tol), group in frame.groupby(["activation", "saturation_tol"], sort=False, dropna=False):
        by = group.set_index("column")
        first, spread = by.iloc[0], by.loc["vertex_avg_distance"]
        rows.append(
            f"| {activation} | {'exact (flat pieces)' if missing(tol) else format(float(tol), 'g')} "
            f"| {int(first['solved'])}/{int(first['draws'])} "
            f"| {_g(first['target_saturated_median'])} / {_g(first['test_saturated_median'])} "
            f"| {_num(by.loc['valid_vertices', 'mean'], '.2f')} "
            f"| {_num(spread['mean'], '.3f')} ({_num(spread['between_seed_std'], '.3f')}, "
            f"{_num(spread['between_target_std'], '.3f')}) "
            f"| {_num(by.loc['success_rate', 'mean'], '.3f')} "
            f"| {_err(by.loc['samples_max_feature_rel_error', 'max'])} |")
    return _markdown(header, rows)


def _interval(low: Any, high: Any, fmt: str) -> str:
    return "n/a" if missing(low) or missing(high) else f"{float(low):{fmt}} to {float(high):{fmt}}"


def detection(frame: pd.DataFrame) -> str:
    """The §5 detection summaries (mislabelled, thin): each score's AUROC over seeds with
    its t-interval, the per-seed values with their bootstrap intervals, and the precision at k."""
    header = ("| question | score | AUROC, mean over seeds | 95% t-interval over seeds | 95% bootstrap over examples "
              "| per seed: AUROC (95% bootstrap) | precision at k | base rate | examples (positives) |")
    rows = []
    for r in frame[frame["seed"] < 0].to_dict("records"):
        seeds = frame[(frame["seed"] >= 0) & (frame["question"] == r["question"]) & (frame["score"] == r["score"])]
        per = "; ".join(f"{int(s['seed'])}: {_num(s['auroc'], '.2f')} "
                        f"({_interval(s['auroc_low'], s['auroc_high'], '.2f')})" for s in seeds.to_dict("records"))
        rows.append(f"| {r['question']} | {r['score']} | {_num(r['auroc'], '.3f')} "
                    f"| {_interval(r['auroc_low'], r['auroc_high'], '.2f')} "
                    f"| {_interval(r['boot_low'], r['boot_high'], '.2f')} | {per} "
                    f"| {_num(r['precision_at_k'], '.2f')} (k={int(r['k'])}) | {_num(r['base_rate'], '.2f')} "
                    f"| {int(r['examples'])} ({int(r['positives'])}) |")
    return _markdown(header, rows, caption="higher score = more suspect; 0.5 is chance; n/a where no example has "
                                          "the size")


def regularisers(frame: pd.DataFrame) -> str:
    """The §5.2 trade-off: each penalty's test accuracy and collision-set sizes, means over
    seeds with their 95% t-intervals."""
    header = ("| penalty | seeds x targets | test accuracy | final cosine penalty | dim C | inscribed radius "
              "| mean width |")
    def cell(r: Mapping[str, Any], column: str, fmt: str) -> str:
        return f"{_num(r[column], fmt)} ({_interval(r[f'{column}_low'], r[f'{column}_high'], fmt)})"

    rows = [f"| {r['penalty']} | {int(r['seeds'])} x {int(r['targets'])} | {cell(r, 'test_accuracy', '.4f')} "
            f"| {_num(r['cosine_penalty'], '.2e')} | {cell(r, 'region_dim', '.1f')} "
            f"| {cell(r, 'region_radius', '.4f')} | {cell(r, 'region_mean_width', '.3f')} |"
            for r in frame.to_dict("records")]
    return _markdown(header, rows, caption="means over seeds of each seed's mean over the targets (95% t-interval "
                                          "over seeds)")


# Each generated block: the reference file it reads and how it is written.
BLOCKS: dict[str, tuple[str, Callable[[pd.DataFrame], str]]] = {
    "table2-mlp": ("mnist-mlp.parquet", table2),
    "collision-set-mlp": ("mnist-mlp.parquet", collision_set),
    "table2-lenet5": ("mnist-lenet5.parquet", lenet),
    "spread-paper": ("spread-paper.parquet", spread_paper),
    "spread-summary": ("spread-summary.parquet", spread_summary),
    "frontier": ("frontier.parquet", frontier),
    "baselines": ("baselines.parquet", baselines),
    "transfer": ("transfer-summary.parquet", transfer),
    "activations-summary": ("activations-summary.parquet", activations),


    "mislabelled": ("mislabelled-summary.parquet", detection),
    "thin": ("thin-summary.parquet", detection),
    "regularisers": ("regularisers-summary.parquet", regularisers),
}


def render(text: str, reference_dir: str | Path, *, blocks: Mapping[str, tuple[str, Callable[[pd.DataFrame], str]]]
           = BLOCKS, extra: Mapping[str, Callable[[], str]] | None = None) -> str:
    """``text`` with every generated block rewritten: a block of ``blocks`` from its table
    in ``reference_dir``, a block of ``extra`` (blocks that read no reference table) by
    calling it.

    Raises:
        KeyError: a block names no known generator (the message lists them).
        FileNotFoundError: a block's reference table is missing.
    """
    extra = extra or {}
    frames: dict[str, pd.DataFrame] = {}

    def one(match: re.Match[str]) -> str:
        name = match["name"]
        if name in extra:
            return match.group(1) + extra[name]() + match.group(4)
        if name not in blocks:
            raise KeyError(f"unknown generated block {name!r}: expected one of {sorted({*blocks, *extra})}")
        file, write = blocks[name]
        if file not in frames:
            frames[file] = pd.read_parquet(Path(reference_dir) / file)
        return match.group(1) + write(frames[file]) + match.group(4)

    return _BLOCK.sub(one, text)
