"""A readable report of the result tables, figures included.

:func:`markdown` renders one experiment with its figure inlined as a data URI (the
Prefect UI shows it without access to the results folder); :func:`write_report` writes
``report.html`` for every experiment, self-contained, next to the tables. Both say what
each column means (:data:`GLOSSARY`), print the paper's published row beside each of
ours that reproduces one (:mod:`collide.results.reference`), and never let a flagged row or a
row without a success rate read as a plain success.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from collide._io import atomic_file
from collide.results.cells import (
    FLAGS,
    PROBABILITY_DECIMALS,
    flag_text,
    format_probability,
    missing,
    pairs_text,
    row_flags,
    success_text,
    valid_text,
)
from collide.results.reference import REFERENCE_COLUMNS, ReferenceRow, reference_for, to_input_units
from collide.results.store import DECLARED, ExperimentStore

UNITS = (
    "Distances are L2 norms in the model's input units: [0, 1] pixels for every experiment "
    "(a store that measured on 0-255 pixels records pixel_scale 255 and is divided by it here). "
    f"Probabilities print with {PROBABILITY_DECIMALS} decimals; one below 1 that would round to 1 "
    "prints as 1 - ε (e.g. 1 - 4.0e-07). n/a: no value, with the reason where there is one."
)

# Every column the report shows, in order, and what it means.
GLOSSARY = {
    "row": "the polytope's row group in the store, `row-<n>`",
    "method": "how the vertices were found: gradient (our solver), exact (linear programming), "
    "paper (the authors' scheme), patches (compositions of real image patches)",
    "init": "where each vertex's search started: target (the target itself), other (an image of "
    "another class, shown in the figure's init column), or the patch start",
    "model": "the network, e.g. mnist-mlp, vgg16-imagenet",
    "layer": "the layer whose features collide",
    "valid": "valid_vertices/n_vertices: vertices that met their method's collision criterion, of "
    "those solved. Only valid vertices are sampled and measured; invalid ones stay in the store "
    "(red frame in the figure). ? = evaluated before validity was recorded; a row of points has no "
    "vertices of its own: none, or the valid vertices its points came from",
    "exact_proximity": "exact rows: the L1 pull toward the init their LPs used (exact.proximity). 0: each "
    "vertex is the extreme point of its unit, the unit's minimum over the collision set; above 0: vertices "
    "pulled toward the init, short of that minimum",
    "converged": "gradient and paper rows: every vertex's optimiser met its stopping rule; n/a for exact rows",
    "n_samples": "random convex combinations of the valid vertices that were classified",
    "success_rate": "share of the samples classified as the target's top-1 class; n/a (with the "
    "reason) when fewer than 2 vertices are valid; the row's flags that qualify it are printed beside it",
    "target_top_prob": "the model's top-1 probability on the target",
    "samples_top_prob": "mean top-1 probability over the samples",
    "dataset_avg_distance": "mean L2 distance over all pairs of distinct images of the dataset (over "
    "seeded random pairs only past 20,000 images)",
    "vertex_avg_distance": "mean pairwise L2 distance between the valid vertices: the polytope's size; in "
    "brackets the number of vertex pairs it averages, n_valid(n_valid-1)/2 (one pair: a single distance)",
    "max_feature_rel_error": "largest ||f(v) - f(t)|| / ||f(t)|| over the valid vertices, f the "
    "layer's post-activation features, t the target",
    "max_feature_rel_error_all": "the same over every solved vertex, invalid ones included",
    "flags": "why the row's numbers mean less than they seem: "
    + "; ".join(f"{name} ({meaning})" for name, meaning in FLAGS.values()),
    "invalid_reason": "why the row has no success rate; empty when the row is fine",
    "target_index": "the target's index in its dataset",
    "config_digest": "hash of the full configuration the row was computed with (in the store's attrs)",
}
_ALWAYS = ("valid", "success_rate", "flags")  # derived, so shown even for stores that predate them
_PROBABILITIES = ("target_top_prob", "samples_top_prob")
_DISTANCES = ("dataset_avg_distance", "vertex_avg_distance")
_ERRORS = ("max_feature_rel_error", "max_feature_rel_error_all")


def _columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in GLOSSARY if c in _ALWAYS or c in frame.columns]


def _distance(value: Any, record: Mapping[str, Any]) -> str:
    """In input units: stores that measured on 0-255 pixels record ``pixel_scale`` 255."""
    if missing(value):
        return "n/a"
    scale = record.get("pixel_scale")
    return f"{to_input_units(float(value), 1.0 if missing(scale) else float(scale)):.4g}"


def _cell(column: str, record: Mapping[str, Any]) -> str:
    value = record.get(column)
    if column == "valid":
        return valid_text(record)
    if column == "success_rate":
        return success_text(record)
    if column == "flags":
        return ", ".join(flag_text(f) for f in row_flags(record))
    if column in _PROBABILITIES:
        return format_probability(value)
    if column == "vertex_avg_distance":  # a spread says how many pairs it rests on
        return _distance(value, record) + ("" if missing(value) else pairs_text(record))
    if column in _DISTANCES:
        return _distance(value, record)
    if column in _ERRORS:
        return "n/a" if missing(value) else f"{float(value):.2e}"
    if column == "converged":
        return "n/a" if missing(value) else ("yes" if value else "no")
    if missing(value):
        return "" if column == "invalid_reason" else "n/a"  # its glossary: empty when the row is fine
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as the report prints it: one string per cell, columns of :data:`GLOSSARY`."""
    cols = _columns(frame)
    return pd.DataFrame([[_cell(c, rec) for c in cols] for rec in frame.to_dict("records")], columns=cols)


def _paper_value(column: str, ref: ReferenceRow) -> str:
    value = ref.values()[column]
    if value is None:
        return "-"
    return f"{value:.4g}" if column in _DISTANCES else f"{value:g}"


def reference_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Our rows that reproduce a published row, each value beside the paper's.

    Empty where the paper has no such experiment (see :func:`collide.results.reference.reference_for`).
    """
    out = []
    for rec in frame.to_dict("records"):
        ref = reference_for(rec)
        if ref is None:
            continue
        line = {"row": _cell("row", rec), "method": _cell("method", rec), "init": _cell("init", rec),
                "paper": f"{ref.table} row {ref.row}: {ref.setting}"}
        for column in REFERENCE_COLUMNS:
            line[f"{column} (ours)"] = _cell(column, rec)
            line[f"{column} (paper)"] = _paper_value(column, ref)
        out.append(line)
    return pd.DataFrame(out)


REFERENCE_NOTE = (
    "The paper's published values (Li, Zhang, Malik 2019, Tables 2, 4, 6) beside ours. Its ImageNet "
    "distances are on 0-255 pixels and are printed here divided by 255, in our input units; its MNIST "
    "distances are already on [0, 1]. Its probabilities carry the digits it prints."
)


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def summary(frame: pd.DataFrame) -> str:
    """Success over the rows that have one, how many have none, flags, the largest error."""
    rates = frame["success_rate"].astype(float)
    scored = rates.dropna()
    parts = []
    if len(scored):
        parts.append(f"Success rate mean {scored.mean():.4f} (min {scored.min():.4f}) over "
                     f"{len(scored)} of {_rows(len(frame))}")
    else:
        parts.append(f"No success rate in any of the {_rows(len(frame))}")
    if len(scored) < len(frame):
        parts.append(f"{_rows(len(frame) - len(scored))} without a success rate (n/a: each row's invalid_reason "
                     "says why)")
    flagged: dict[str, int] = {}
    for rec in frame.to_dict("records"):
        for flag in row_flags(rec):
            flagged[flag] = flagged.get(flag, 0) + 1
    parts += [f"FLAGGED {flag_text(f)}: {_rows(n)}" for f, n in flagged.items()]
    errors = _largest_errors(frame)
    if errors:
        parts.append(f"largest feature error of the valid vertices, by method: {errors}")
    return "; ".join(parts) + "."


def _largest_errors(frame: pd.DataFrame) -> str:
    """Each method's largest feature error over its valid vertices, beside the bound its
    criterion sets (``rel<=0.01``): a vertex is valid by its own method's criterion, so one
    maximum over methods would be the loosest method's and say nothing of the others. Rows
    of points (``n_vertices`` 0: a baseline's, the frontier's) have no vertices and are left out."""
    parts = []
    if "n_vertices" in frame:
        frame = frame[frame["n_vertices"].astype(float).fillna(1) != 0]
    # A row without a method (a store from before the column) keeps its error, unlabelled.
    methods = frame["method"].fillna("").astype(str) if "method" in frame else pd.Series("", index=frame.index)
    for method, rows in frame.groupby(methods, sort=False):
        errors = rows["max_feature_rel_error"].astype(float).dropna()
        if not len(errors):
            continue
        bounds = sorted({str(c).split(",")[0] for c in rows.get("criterion", pd.Series(dtype=object)).dropna()})
        bound = f" ({' or '.join(bounds)})" if bounds else ""
        parts.append(f"{method + ' ' if method else ''}{errors.max():.2e}{bound}")
    return ", ".join(parts)


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _markdown_table(display: pd.DataFrame) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    return ["| " + " | ".join(map(cell, display.columns)) + " |", "|" + "---|" * len(display.columns)] + [
        "| " + " | ".join(cell(str(v)) for v in rec) + " |" for rec in display.itertuples(index=False)
    ]


def glossary_markdown() -> str:
    return "\n".join(["## Columns", "", UNITS, ""] + [f"- `{c}`: {text}" for c, text in GLOSSARY.items()])


def markdown(store: ExperimentStore, *, max_rows: int = 50) -> str:
    """The experiment's table (first ``max_rows`` rows), the paper's rows, figure and glossary as Markdown."""
    frame = store.read_table()
    incomplete = store.ledger().get("incomplete")
    lines = [
        f"# {store.name}: {len(frame)} colliding polytopes",
        "",
        f"{summary(frame)} Table: `{store.table_path}`.",
        "",
        *([f"**{incomplete}**", ""] if incomplete else []),
        *_markdown_table(display_frame(frame.head(max_rows))),
    ]
    if len(frame) > max_rows:
        lines.append(f"\n({len(frame) - max_rows} more rows in the Parquet table)")
    reference = reference_frame(frame.head(max_rows))
    if len(reference):
        lines += ["", "## Beside the paper", "", REFERENCE_NOTE, "", *_markdown_table(reference)]
    figure = store.figure_path
    if figure.is_file():
        lines += ["", f"![{store.name}: targets, inits and vertices]({_png_uri(figure)})"]
    lines += ["", glossary_markdown()]
    return "\n".join(lines) + "\n"


# An auditor's scan writes these beside its table (collide.experiments.scan).
RANKING_OUTPUT, GALLERY_OUTPUT, CERTIFIED_OUTPUT = "-ranking.parquet", "-gallery.png", "-certified.parquet"
# A scan's second stage as shown: the certified sizes, and the samples' only where they mixed.
_CERTIFIED_SHOWN = ("rank", "index", "dim", "radius", "mean_width", "mean_width_se", "converged", "rhat", "ess",
                    "mean_distance_to_target")
_RANKING_SHOWN = ("rank", "index", "label", "prediction", "confidence", "valid_vertices", "spread", "dim", "radius",
                  "mean_width", "reason")


def _ranking_display(frame: pd.DataFrame, shown: int) -> pd.DataFrame:
    """The most and the least blind ``shown`` examples, rounded for reading."""
    part = pd.concat([frame.head(shown), frame.tail(shown)]).drop_duplicates("index")
    part = part[[c for c in _RANKING_SHOWN if c in part]].copy()
    for column in ("confidence", "spread", "radius", "mean_width"):
        if column in part:
            part[column] = part[column].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    return part


def _certified_display(store: ExperimentStore) -> pd.DataFrame | None:
    """A scan's second stage (its certified examples), rounded for reading; None without one."""
    path = store.output(CERTIFIED_OUTPUT)
    if not path.is_file():
        return None
    part = pd.read_parquet(path)
    part = part[[c for c in _CERTIFIED_SHOWN if c in part]].copy()
    for column in ("radius", "mean_width", "mean_width_se", "rhat", "ess", "mean_distance_to_target"):
        if column in part:
            part[column] = part[column].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    return part


def ranking_markdown(store: ExperimentStore, *, shown: int = 10) -> tuple[pd.DataFrame, str] | None:
    """A scan's ranking and a Markdown page of its most and least blind examples with the
    gallery inlined; None for an experiment that ranks nothing."""
    path = store.output(RANKING_OUTPUT)
    if not path.is_file():
        return None
    frame = pd.read_parquet(path)
    by = frame["rank_by"].iloc[0] if len(frame) else ""
    lines = [f"# {store.name}: {len(frame)} examples ranked by {by}", "",
             f"Rank 1 is the example the model is most blind around. Ranking: `{path}`.", "",
             *_markdown_table(_ranking_display(frame, shown))]
    gallery = store.output(GALLERY_OUTPUT)
    if gallery.is_file():
        lines += ["", f"![{store.name}: the most and least blind examples]({_png_uri(gallery)})"]
    certified = _certified_display(store)
    if certified is not None:
        lines += ["", "## Certified: the second stage", "",
                  "The most and least blind examples measured in full (the samples' statistics only where "
                  "the chains mixed).", "", *_markdown_table(certified)]
    return frame, "\n".join(lines) + "\n"


def _html_table(display: pd.DataFrame) -> str:
    return display.to_html(index=False, escape=True)


# A summary table longer than this shows its first rows, and says how many more its file holds.
SUMMARY_ROWS = 60


def summary_outputs(store: ExperimentStore, ledger: Mapping[str, Any]) -> tuple[list[Path], dict[str, str]]:
    """The summary tables and figures the experiment's last run wrote beside its table, by
    the ledger's record of them, that are still the files it wrote; and those that are not,
    with why. A scan's ranking, gallery and certified table have sections of their own.

    The ledger is data: only files the store declares are looked at (:meth:`ExperimentStore.
    declared_damage`), never a name it holds that points elsewhere."""
    recorded = ledger.get(DECLARED)
    ours = store.declared_outputs()  # the table and figure have their places above
    damaged = store.declared_damage(ledger)
    names = sorted(n for n in recorded if isinstance(n, str) and n in ours) if isinstance(recorded, dict) else []
    shown = [ours[n] for n in names
             if n not in damaged and not n.endswith((RANKING_OUTPUT, GALLERY_OUTPUT, CERTIFIED_OUTPUT))]
    return shown, damaged


def _summaries_html(store: ExperimentStore, ledger: Mapping[str, Any]) -> list[str]:
    """What the experiment concludes over its rows: each summary table (rounded) and figure."""
    shown, damaged = summary_outputs(store, ledger)
    parts = [f"<p class=warn>{html.escape(store.declared_text(n, why))}: not shown</p>" for n, why in damaged.items()]
    for path in shown:
        if path.suffix == ".png":
            parts.append(f"<h3>{html.escape(path.name)}</h3><p><img alt='{html.escape(path.name)}' "
                         f"src='{_png_uri(path)}'></p>")
        elif path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            more = f" (the first {SUMMARY_ROWS} of {len(frame)} rows)" if len(frame) > SUMMARY_ROWS else ""
            table = frame.head(SUMMARY_ROWS).to_html(index=False, escape=True, na_rep="n/a",
                                                      float_format=lambda v: f"{v:.4g}")
            parts.append(f"<h3>{html.escape(path.name)}{more}</h3>{table}")
    return parts


def write_report(root: str | Path, stores: Sequence[ExperimentStore]) -> Path:
    """``<root>/report.html``: every experiment's table and figure, and the summaries its run
    wrote (tables and figures over its rows), one self-contained page."""
    root = Path(root)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    glossary = "".join(f"<dt><code>{html.escape(c)}</code></dt><dd>{html.escape(t)}</dd>" for c, t in GLOSSARY.items())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>collide report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}"
        "dt{font-weight:bold}dd{margin:0 0 .4em 1.5em}.warn{color:#b00}</style>",
        f"</head><body><h1>collide: result tables</h1><p>Rebuilt {now} from the stores under "
        f"<code>{html.escape(str(root))}</code>.</p><p>{html.escape(UNITS)}</p>",
    ]
    for store in stores:
        name = store.name
        frame = store.read_table()
        ledger = store.ledger()
        flagged = any(row_flags(rec) for rec in frame.to_dict("records"))
        parts.append(f"<h2>{html.escape(name)}</h2><p>{len(frame)} rows; configs "
                     f"{html.escape(', '.join(ledger.get('config_digests', [])))}; "
                     f"table <code>{html.escape(str(store.table_path))}</code></p>")
        if ledger.get("incomplete"):
            parts.append(f"<p class=warn>{html.escape(ledger['incomplete'])}</p>")
        parts.append(f"<p{' class=warn' if flagged else ''}>{html.escape(summary(frame))}</p>")
        parts.append(_html_table(display_frame(frame)))
        reference = reference_frame(frame)
        if len(reference):
            parts.append(f"<h3>Beside the paper</h3><p>{html.escape(REFERENCE_NOTE)}</p>{_html_table(reference)}")
        figure = store.figure_path
        if figure.is_file():
            parts.append(f"<p><img alt='{html.escape(name)} targets, inits and vertices' "
                         f"src='{_png_uri(figure)}'></p>")
        parts += _summaries_html(store, ledger)
        ranked = store.output(RANKING_OUTPUT)
        if ranked.is_file():
            frame = pd.read_parquet(ranked)
            parts.append(f"<h3>Ranked: the most and least blind of {len(frame)} examples</h3>"
                         f"{_html_table(_ranking_display(frame, 10))}")
            gallery = store.output(GALLERY_OUTPUT)
            if gallery.is_file():
                parts.append(f"<p><img alt='{html.escape(name)} gallery' src='{_png_uri(gallery)}'></p>")
            certified = _certified_display(store)
            if certified is not None:
                parts.append(f"<h3>Certified: the second stage</h3>{_html_table(certified)}")
    parts.append(f"<h2>Columns</h2><p>{html.escape(UNITS)}</p><dl>{glossary}</dl></body></html>")
    path = root / "report.html"
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path
