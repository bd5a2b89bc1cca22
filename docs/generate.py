"""The documentation's generated blocks: references from the code, results from the files.

A page marks a block

    <!-- generated: NAME -->
    (placeholder text, replaced when the site is built)
    <!-- end generated -->

and the MkDocs hook (``docs/hooks.py``) fills every block when the site is built, so no
option, key, default or measured number on the site is typed by hand:

- ``cli``: every command and option, walked from ``flows.cli.build_parser()``;
- ``config``: every experiment's config keys, from its config dataclass;
- ``benchmarks``, ``benchmark-figures``: from ``benchmarks/results.json``;
- the result tables of ``collide.results.published.BLOCKS``: from ``data/reference/``.

This module is not part of the library: it imports ``flows`` and ``benchmarks``, which
``collide`` never does.
"""

from __future__ import annotations

import argparse
import ast
import base64
import io
import json
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = ROOT / "data" / "reference"
BENCH_RESULTS = ROOT / "benchmarks" / "results.json"
SCAN_RESULTS = ROOT / "benchmarks" / "scan.json"
SET_SOLVER_RESULTS = ROOT / "benchmarks" / "set_solvers.json"


def _cell(text: Any) -> str:
    """``text`` safe inside one Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _code(text: Any) -> str:
    """``text`` as inline code, whatever backticks it holds."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# ---------------------------------------------------------------- the command line


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each sub-command of ``parser``, in the order they were added."""
    out = []
    for action in parser._actions:  # argparse has no public walk over its actions
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += " " + (action.metavar or action.dest.upper())
        else:
            name = action.metavar or action.dest
        values = ", ".join(map(str, action.choices)) if action.choices else ""
        default = "" if action.default in (None, False, argparse.SUPPRESS) else json.dumps(action.default, default=str)
        rows.append(f"| {_code(name)} | {_cell(values)} | {_cell(default)} | {_cell(action.help or '')} |")
    return rows


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Every command of ``collide`` with its usage, description and options, from the parser."""
    if parser is None:
        from flows.cli import build_parser

        parser = build_parser()
    parts = [f"```text\n{parser.format_usage().strip()}\n```", "", _cell(parser.description or ""), ""]
    if parser.epilog:
        parts += [f"```text\n{parser.epilog.strip()}\n```", ""]

    def walk(path: str, help_text: str, sub: argparse.ArgumentParser, depth: int) -> None:
        nested = _subcommands(sub)
        parts.extend([f"{'#' * depth} `{path}`", ""])
        if help_text:
            parts.extend([help_text[0].upper() + help_text[1:] + ".", ""])
        parts.extend([f"```text\n{sub.format_usage().strip()}\n```", ""])
        if sub.description:
            parts.extend([f"```text\n{sub.description.strip()}\n```", ""])
        rows = _option_rows(sub)
        if rows:
            parts.extend(["| argument | values | default | what |", "|---|---|---|---|", *rows, ""])
        if sub.epilog:
            parts.extend([f"```text\n{sub.epilog.strip()}\n```", ""])
        for name, text, child in nested:
            walk(f"{path} {name}", text, child, min(depth + 1, 4))

    for name, text, sub in _subcommands(parser):
        walk(f"{parser.prog} {name}", text, sub, 2)
    return "\n".join(parts).rstrip() + "\n"


# ---------------------------------------------------------------- config keys


def config_reference(name: str) -> str:
    """The config keys of experiment ``name``: one table row a key, from its dataclass."""
    from collide.experiments.registry import experiment

    module = experiment(name)
    lines = [f"`collide run {name} --set KEY=VALUE` (values are JSON; nested keys dotted). "
             f"`collide config show {name}` prints the same list, `--json` the defaults as a `--config` file.",
             "", "| key | type | default | what |", "|---|---|---|---|"]
    config = module.Config()
    for key, kind, default, description in config.keys_read():
        lines.append(f"| {_code(key)} | {_cell(kind)} | {_code(json.dumps(default, default=str))} "
                     f"| {_cell(description)} |")
    if text := config.not_read_text(name, _code):  # as `collide config show` says it, as a sentence
        lines += ["", text[0].upper() + text[1:] + "."]
    return "\n".join(lines) + "\n"


def config_references() -> str:
    """A section per registered experiment, each with its config keys."""
    from collide.experiments.registry import SUMMARIES

    parts = []
    for name, summary in SUMMARIES.items():
        parts += [f"## {name}", "", summary, "", config_reference(name)]
    return "\n".join(parts)


# ---------------------------------------------------------------- benchmarks


def benchmark_tables(path: Path = BENCH_RESULTS) -> str:
    """``benchmarks/results.md``'s tables, written by the benchmarks' own writer from
    ``results.json``, with their headings under this page's title."""
    from benchmarks.report import markdown

    text = markdown(json.loads(path.read_text()))
    body = text.split("\n", 1)[1]  # the writer's own title: the page has one
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", body, flags=re.M).strip() + "\n"


def _measured(results: dict[str, Any], item: str) -> str:
    """When and where a benchmark item of ``results`` was measured, as a sentence."""
    m = results["machine"]
    return f"Measured {results.get('carried_over', {}).get(item, m['date'])} on {m['cpu']}, {m['cores']} cores."


def exact_forms_table(path: Path = BENCH_RESULTS) -> str:
    """The exact LP's two forms side by side, from ``results.json`` (benchmarks/exact_forms.py)."""
    from benchmarks.report import exact_forms_section, exact_resnet_section

    results = json.loads(path.read_text())
    m, dates = results["machine"], results.get("carried_over", {})
    text = ""
    if "exact_forms" in results:
        text += (_measured(results, "exact_forms") + "\n\n"
                 + "\n".join(exact_forms_section(results["exact_forms"])[2:]) + "\n")
    else:
        text += "_Not measured yet: `python -m benchmarks.run --only exact_forms`._\n"
    if "exact_resnet" in results:
        text += (f"\n### ResNet-18\n\nMeasured {dates.get('exact_resnet', m['date'])}.\n\n"
                 + "\n".join(exact_resnet_section(results["exact_resnet"])[2:]) + "\n")
    return text


def exact_sizes_table(path: Path = BENCH_RESULTS) -> str:
    """The exact polytope at each survey model's largest input, from ``results.json``
    (benchmarks/exact_sizes.py), with its equality rows and their rank."""
    from benchmarks.report import exact_sizes_section

    results = json.loads(path.read_text())
    if "exact_sizes" not in results:
        return "_Not measured yet: `python -m benchmarks.run --only exact_sizes`._\n"
    return (_measured(results, "exact_sizes") + "\n\n"
            + "\n".join(exact_sizes_section(results["exact_sizes"])[2:]) + "\n")


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def benchmark_figures(path: Path = BENCH_RESULTS) -> str:
    """Figures of ``results.json``'s scans, drawn on a ``Figure`` object of their own:
    matplotlib's global backend and state stay as the caller left them."""
    from matplotlib.figure import Figure

    results = json.loads(path.read_text())
    out = []

    def show(fig: Any, alt: str, caption: str) -> None:
        out.extend([f'<figure markdown="span"><img alt="{alt}" src="data:image/png;base64,{_png(fig)}">',
                    f"<figcaption>{caption}</figcaption></figure>", ""])

    batching = results.get("batching")
    if batching and batching.get("runs"):
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        runs = batching["runs"]
        ax.plot([r["targets_per_batch"] for r in runs], [r["polytopes_per_second"] for r in runs], "o-")
        ax.set(xscale="log", xlabel="targets per solver batch", ylabel="polytopes per second",
               title=f"{batching['targets']} targets, {batching['model']} at {batching['layer']}")
        ax.grid(alpha=0.3)
        show(fig, "batching throughput", "Gradient polytopes per second against the targets in one solver batch.")

    knn = results.get("knn")
    if knn and knn.get("sizes"):
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        sizes = knn["sizes"]
        n = [s["n"] for s in sizes]
        ax.plot(n, [s["index"]["bulk_seconds"] for s in sizes], "o-", label="index: queries")
        ax.plot(n, [s["index"]["build_seconds"] for s in sizes], "s--", label="index: build")
        ax.plot(n, [s["exact"]["bulk_seconds"] for s in sizes], "^-", label="exact search (timed on a sample, scaled)")
        ax.set(xscale="log", yscale="log", xlabel="patches in the store", ylabel="seconds",
               title=f"{knn['n_queries']:,} queries, k = {knn['k']}")
        ax.legend()
        ax.grid(alpha=0.3, which="both")
        show(fig, "kNN time", "kNN: the index's build and query time against exact chunked search.")

    for solver in results.get("solver", []):
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        grid = solver["grid"]
        ax.plot([g["lr"] for g in grid], [g["max_rel_error"] for g in grid], "o-", label="authors' scheme")
        ax.axhline(solver["criterion"]["rel_tol"], color="k", ls=":", label="collide's criterion")
        ax.axvline(solver["grid_choice"], color="C1", ls="--", label="chosen rate")
        ax.set(xscale="log", yscale="log", xlabel="learning rate ([0, 1] pixels)",
               ylabel="largest relative feature error", title=f"{solver['model']} at {solver['layer']}")
        ax.legend()
        ax.grid(alpha=0.3, which="both")
        show(fig, f"learning-rate grid {solver['model']}",
             f"The authors' scheme on {solver['model']}: final feature error over its learning-rate grid.")
    return "\n".join(out) if out else "_No scans in `benchmarks/results.json`._\n"


def activations_figure(path: Path = REFERENCE_DIR / "activations-summary.parquet") -> str:
    """The activations experiment's figure, drawn from its published summary by the
    experiment's own drawing code (on a ``Figure`` of its own, no global state)."""
    import pandas as pd

    from collide.experiments.activations import draw_summary

    fig = draw_summary(pd.read_parquet(path), title="activations (published summary)")
    return (f'<figure markdown="span"><img alt="activations summary" src="data:image/png;base64,{_png(fig)}">'
            "<figcaption>Each panel against the saturation tolerance, tightening to the right: the share of "
            "draws solved, then the solved polytopes' means (line) and range (band); ReLU dashed.</figcaption>"
            "</figure>\n")


def _stability_rows(pairs: dict[str, Any]) -> list[str]:
    rows = []
    for name, m in pairs.items():
        top10 = m.get("top10", {})
        rows.append(f"| {name} | {int(m['examples'])} | {m['spearman']:.3f} | {m['top_overlap']:.2f} "
                    f"({int(m['top_k'])}) | "
                    + (f"{top10['top_overlap']:.2f} ({int(top10['top_k'])})" if top10 else "-") + " |")
    return rows


def scan_costs(path: Path = SCAN_RESULTS) -> str:
    """The scan's cost per example by stage and its ranking's stability, from
    ``benchmarks/scan.json`` (``python -m benchmarks.scan``)."""
    if not path.is_file():
        return "_Not measured yet: `python -m benchmarks.scan`._\n"
    r = json.loads(path.read_text())
    m, st = r["machine"], r["stages"]
    out = [f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, load average {m['load_average']} before and "
           f"{m.get('load_average_after', '?')} after; the MNIST MLP at `{r['layer']}`.", "",
           "| stage | seconds per example |", "|---|---|",
           f"| screen: batched gradient polytopes | {st['gradient_s']:.2f} |",
           f"| screen: exact set's radius and dimension (one LP) | {st['exact_screen_s']:.2f} |",
           f"| certify: widths to 5% and mixing samples | {st['certify_s']:.1f} |"]
    row = r.get("exact_row")
    if row:
        out += [f"| `collision_geometry` with the screen's settings (sizes only) | {row['geometry_scan_s']:.2f} |",
                *([f"| (the same with four to eight width directions) | {row['geometry_widths_s']:.2f} |"]
                  if "geometry_widths_s" in row else []),
                f"| (the geometry the scan experiment's exact rows first took) | {row['geometry_before_s']:.1f} |"]
    if "scan_per_example_s" in st:
        out += ["", f"`collide.scan` as a whole, its exact sets measured {st['scan_threads']} at a time: "
                f"{st['scan_per_example_s']:.2f} s an example. The whole test set at that rate: "
                f"{st['test_set_hours']:.1f} hours ({st['test_set_note']}).", ""]
    else:
        out += ["", f"The whole test set at that rate: {st['test_set_hours']:.1f} hours in one process "
                f"({st['test_set_note']}).", ""]
    if e := r.get("experiment"):
        em = e["machine"]
        # machine() is read when the run ends; runs since keep the load average before it apart.
        load = (f"{em['load_average_before']} before and {em['load_average']} after" if "load_average_before" in em
                else f"{em['load_average']} at the end")
        out += [f"The scan experiment end to end (`{e['command']}`: a Prefect flow over {e['workers']} local Dask "
                f"workers, {e['per_job']} examples a job, its temporary server's start included), finished "
                f"{em['date']}, load average {load}: {e['examples']} test images in "
                f"{e['seconds']:.0f} s, {e['per_example_s']:.2f} s an image; the whole test set at that rate: "
                f"{e['test_set_hours']:.1f} hours.", ""]
    pairs = {**{f"training seeds: {k}": v for k, v in r.get("across_training_seeds", {}).items()},
             **{f"solver seeds, training seed 0: {k}": v for k, v in r.get("across_solver_seeds", {}).items()}}
    if "radius_vs_spread" in r:
        pairs["radius against spread, one model"] = r["radius_vs_spread"]
    if pairs:
        dated = f" (measured {r['kept_from']})" if "kept_from" in r else ""
        out += [f"How stable the ranking is{dated}: two rankings of the same test images, the Spearman "
                "correlation of their ranks and the share of one's top 1% (and top 10%) in the other's, "
                "with how many examples that top holds.", "",
                "| rankings compared | examples | Spearman | top 1% overlap (k) | top 10% overlap (k) |",
                "|---|---|---|---|---|", *_stability_rows(pairs)]
    return "\n".join(out) + "\n"


def ball_forms(path: Path = SCAN_RESULTS) -> str:
    """The ball LP's solved form against its fall-back, from ``benchmarks/scan.json``
    (``python -m benchmarks.scan --stages-only``)."""
    row = json.loads(path.read_text()).get("exact_row") if path.is_file() else None
    if not row or "examples" not in row:  # written before the near-face form
        return "_Not measured yet: `python -m benchmarks.scan --stages-only`._\n"
    m = row.get("machine") or json.loads(path.read_text())["machine"]
    return (f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, load average {m['load_average']}, on "
            f"{row['examples']} MNIST test images at the MLP's `relu1`, one process: the near-face form "
            f"{row['ball_boxed_s']:.2f} s a set, every box face a row {row['ball_every_box_row_s']:.2f} s; their "
            f"radii differ by at most {row['ball_radius_max_rel_diff']:.1e} relative "
            "(`python -m benchmarks.scan --stages-only`, `exact_row` in `benchmarks/scan.json`).\n")


def set_solvers(path: Path = SET_SOLVER_RESULTS) -> str:
    """``collision_size`` by the dual simplex and by the interior point, from
    ``benchmarks/set_solvers.json`` (``python -m benchmarks.set_solvers``)."""
    if not path.is_file():
        return "_Not measured yet: `python -m benchmarks.set_solvers`._\n"
    result = json.loads(path.read_text())
    m = result["machine"]
    rows = [f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, one thread, load average "
            f"{m['load_average']} (after: {m.get('load_average_after', '-')}); {result['reps']} runs of each "
            f"solver, alternating, in one process; the default takes the interior point from "
            f"{result['ipm_region_rows']:,} region rows"
            + (f", handing the simplex the rounds after one that adds fewer than {result['simplex_tail_rows']} "
               "(as the interior point's column does)" if "simplex_tail_rows" in result else "")
            + " (`python -m benchmarks.set_solvers`).", "",
            "| model | layer | target | inputs | region rows | default | simplex (median, range) "
            "| interior point (median, range) "
            "| simplex time / interior point's | radius, relative difference | dimension |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    def spread(run: dict) -> str:
        return f"{run['median_s']:.2f} s ({min(run['seconds']):.2f}-{max(run['seconds']):.2f})"

    for r in result["sets"]:
        ref, ipm = r["simplex"], r["interior point"]
        dim = f"{ref['dim']} ({ref['dim_method']})" + ("" if r["same_dim"] else f" against {ipm['dim']} "
                                                        f"({ipm['dim_method']})")
        # A file from before several targets: the first correct test 7's set alone.
        target = f"test {r['target_index']} (a {r['target_label']})" if "target_index" in r else "the first 7"
        rows.append(f"| {r['model']} | `{r['layer']}` | {target} | {r['inputs']} | {r['region_rows']:,} "
                    f"| {r['default']} "
                    f"| {spread(ref)} | {spread(ipm)} | {r['speedup']:.2f}x "
                    f"| {r['radius_rel_diff']:.1e} | {dim} |")
    return "\n".join(rows) + "\n"


def models_survey(path: Path = BENCH_RESULTS) -> str:
    """The torchvision survey's table, by the benchmarks' own writer, from ``results.json``."""
    from benchmarks.report import models_section

    models = json.loads(path.read_text()).get("models")
    return models_section(models) + "\n" if models else "_No survey in `benchmarks/results.json`._\n"


# ---------------------------------------------------------------- the layout


def layers_reference(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The library's layers, top to bottom, as the import-linter contract states them."""
    contracts = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]
    lines = []
    for contract in contracts:
        if contract.get("type") != "layers":
            continue
        lines += [f"_{contract['name']}_", "", "| layer (top first) | modules |", "|---|---|"]
        for i, layer in enumerate(contract["layers"], 1):
            kind = ("independent of each other" if "|" in layer
                    else "may import each other" if ":" in layer else "")
            names = ", ".join(f"`{n.strip()}`" for n in re.split(r"[|:]", layer))
            lines.append(f"| {i} | {names}{f' ({kind})' if kind else ''} |")
        lines.append("")
    return "\n".join(lines)


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    return doc.strip().split("\n\n")[0].replace("\n", " ") if doc else ""


def layout_reference(package: Path = ROOT / "collide") -> str:
    """Every module of the library and of the pipeline around it, with its docstring's summary."""
    lines = ["| module | what it holds |", "|---|---|"]
    for top in (package, ROOT / "tasks", ROOT / "flows"):
        for path in sorted(top.rglob("*.py")):
            if "shipped" in path.parts:
                continue
            lines.append(f"| `{path.relative_to(ROOT).as_posix()}` | {_cell(_summary(path))} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- activations


ACTIVATION_OPS = ("relu", "relu6", "hardtanh", "hardsigmoid", "hardswish", "sigmoid", "tanh", "elu", "selu", "celu",
                  "gelu", "silu", "mish", "softplus", "logsigmoid")


def activations_reference(tol: float = 1e-2) -> str:
    """Each addressable activation's asymptotes and the thresholds of its saturated regimes
    at ``tol`` (the default ``saturation_tol``), computed by :mod:`collide.activations`."""
    import math

    from collide.activations import lookup

    def num(x: float | None) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"

    rows = ["| activation | lower asymptote | upper asymptote | saturated at z ≤ | saturated at z ≥ | regime |",
            "| --- | --- | --- | --- | --- | --- |"]
    for op in ACTIVATION_OPS:
        act = lookup(op)
        assert act is not None, op
        sat = act.at(tol)
        how = "flat piece (exact)" if act.piecewise_linear else f"within {tol:g} of the asymptote"
        rows.append(f"| {act.name} | {num(act.lower)} | {num(act.upper)} | {num(sat.below)} | {num(sat.above)} "
                    f"| {how} |")
    return "\n".join(rows)


# ---------------------------------------------------------------- every block


def generators() -> dict[str, Callable[[], str]]:
    """Every block a page may ask for that is not a result table, by name."""
    out: dict[str, Callable[[], str]] = {"cli": cli_reference, "benchmarks": benchmark_tables,
                                         "benchmark-figures": benchmark_figures,
                                         "layers": layers_reference, "layout": layout_reference,
                                         "config": config_references, "activations": activations_reference,
                                         "exact-forms": exact_forms_table, "exact-sizes": exact_sizes_table,
                                         "activations-figure": activations_figure,
                                         "models-survey": models_survey, "scan-costs": scan_costs,
                                         "ball-forms": ball_forms, "set-solvers": set_solvers}
    return out


def fill(markdown: str) -> str:
    """``markdown`` with every generated block filled: the references and benchmarks from
    the code and ``results.json``, the result tables from ``data/reference/``."""
    from collide.results.published import render

    # flows/ and benchmarks/ come from the checkout built, as `python -m` would find them;
    # MkDocs restores sys.path after loading a hook, so this is done on every call.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return render(markdown, REFERENCE_DIR, extra=generators())
