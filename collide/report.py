"""A readable report of the result tables, figures included.

:func:`markdown` renders one experiment with its figure inlined as a data URI (the
Prefect UI shows it without access to the results folder); :func:`write_report` writes
``report.html`` for every experiment, self-contained, next to the tables.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path

import pandas as pd

from collide.store import TABLE_COLUMNS, atomic_file, table_path
from collide.tables import figure_path, read_ledger

EXTRA_COLUMNS = ("init", "target_index", "converged", "config_digest")


def _columns(frame: pd.DataFrame) -> list[str]:
    wanted = [c for c in TABLE_COLUMNS if c != "experiment"] + list(EXTRA_COLUMNS)
    return [c for c in wanted if c in frame.columns]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def markdown(root: str | Path, experiment: str, *, max_rows: int = 50) -> str:
    """The experiment's table (first ``max_rows`` rows) and figure as Markdown."""
    frame = pd.read_parquet(table_path(root, experiment))
    cols = _columns(frame)
    lines = [
        f"# {experiment}: {len(frame)} colliding polytopes",
        "",
        f"Success rate mean {frame['success_rate'].mean():.3f} (min {frame['success_rate'].min():.3f}); "
        f"largest feature error {frame['max_feature_rel_error'].max():.2e}. "
        f"Table: `{table_path(root, experiment)}`.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for _, rec in frame.head(max_rows).iterrows():
        lines.append("| " + " | ".join(_cell(rec[c]) for c in cols) + " |")
    if len(frame) > max_rows:
        lines.append(f"\n({len(frame) - max_rows} more rows in the Parquet table)")
    figure = figure_path(root, experiment)
    if figure.is_file():
        lines += ["", f"![{experiment}: targets and vertices]({_png_uri(figure)})"]
    return "\n".join(lines) + "\n"


def write_report(root: str | Path, experiments: list[str]) -> Path:
    """``<root>/report.html``: every experiment's table and figure, one self-contained page."""
    root = Path(root)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>collide report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style>",
        f"</head><body><h1>collide: result tables</h1><p>Rebuilt {now} from the stores under "
        f"<code>{html.escape(str(root))}</code>.</p>",
    ]
    for name in experiments:
        frame = pd.read_parquet(table_path(root, name))
        ledger = read_ledger(root, name)
        parts.append(f"<h2>{html.escape(name)}</h2><p>{len(frame)} rows; configs "
                     f"{html.escape(', '.join(ledger.get('config_digests', [])))}; "
                     f"table <code>{html.escape(str(table_path(root, name)))}</code></p>")
        parts.append(frame[_columns(frame)].to_html(index=False, float_format=lambda v: f"{v:.4g}"))
        figure = figure_path(root, name)
        if figure.is_file():
            parts.append(f"<p><img alt='{html.escape(name)} vertices' src='{_png_uri(figure)}'></p>")
    parts.append("</body></html>")
    path = root / "report.html"
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path
