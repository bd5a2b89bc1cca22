"""The documentation builds strictly, its code examples run, and its generated blocks come
from the code and the committed results, not from typing."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.support import PROJECT as ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
PLACEHOLDER = "Generated when the site is built"
SKIP = "<!-- docs-test: skip"
# Examples that cannot run offline on a CPU in seconds must stay the exception.
MAX_SKIPPED_EXAMPLES = 2
EXAMPLE_TIMEOUT_S = 300


def _generate():
    spec = importlib.util.spec_from_file_location("collide_docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _examples(page: Path) -> tuple[list[str], int]:
    """The page's ```python blocks in order, and how many are marked to skip."""
    text = page.read_text()
    blocks, skipped = [], 0
    for match in re.finditer(r"^(?P<before>[^\n]*)\n```python\n(?P<code>.*?)^```", text, flags=re.S | re.M):
        if match["before"].strip().startswith(SKIP):
            skipped += 1
        else:
            blocks.append(match["code"])
    return blocks, skipped


PAGES_WITH_CODE = [p for p in PAGES if _examples(p)[0]]


def test_the_examples_are_found_and_few_are_skipped():
    total = sum(len(_examples(p)[0]) for p in PAGES)
    skipped = sum(_examples(p)[1] for p in PAGES)
    assert total >= 6, total  # the README's, the tutorial's five steps, the layers page's
    assert skipped <= MAX_SKIPPED_EXAMPLES, skipped
    assert ROOT / "README.md" in PAGES_WITH_CODE and DOCS / "tutorial.md" in PAGES_WITH_CODE


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_example_runs(page):
    """A page's blocks run in order as one script, as a reader pastes them, on a CPU, offline."""
    code = "\n".join(_examples(page)[0])
    # One thread, as the experiments run: on a machine shared with other work, torch's one
    # thread per core only competes with itself.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    if page.name in ("README.md", "tutorial.md"):
        # The comment beside the first print says which layers it lists: it must stay true.
        assert done.stdout.splitlines()[0] == "['1', '5']"


def test_the_readme_is_a_map():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    first = text.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert first[0].startswith("make run") and first[1].startswith("make test")
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), link


def test_pages_hold_no_typed_result_blocks():
    """A page's generated blocks hold only the placeholder: the hook writes them at build time."""
    block = re.compile(r"<!-- generated: [\w-]+ -->\n(.*?)<!-- end generated -->", re.S)
    for page in PAGES:
        for body in block.findall(page.read_text()):
            assert body.strip() == f"_{PLACEHOLDER} (`make docs`)._", page


def test_every_block_a_page_asks_for_exists():
    from collide.results.published import BLOCKS

    known = {*BLOCKS, *_generate().generators()}
    for page in PAGES:
        for name in re.findall(r"^<!-- generated: ([\w-]+) -->$", page.read_text(), flags=re.M):
            assert name in known, (page, name)


def test_the_cli_reference_is_walked_from_the_parser():
    parser = argparse.ArgumentParser(prog="tool", description="A tool.")
    sub = parser.add_subparsers()
    go = sub.add_parser("go", help="go somewhere")
    go.add_argument("where", choices=["up", "down"], help="which way")
    go.add_argument("--speed", type=int, default=3, help="how fast | really")
    nested = sub.add_parser("config", help="configs").add_subparsers()
    nested.add_parser("show", help="show one").add_argument("--json", action="store_true", help="as JSON")
    text = _generate().cli_reference(parser)
    assert "## `tool go`" in text and "### `tool config show`" in text
    assert "| `where` | up, down |  | which way |" in text
    assert "| `--speed SPEED` |  | 3 | how fast \\| really |" in text
    assert "| `--json` |  |  | as JSON |" in text


def test_the_cli_reference_lists_every_command_and_option():
    from flows.cli import build_parser

    gen = _generate()
    text = gen.cli_reference()
    for name, _, sub in gen._subcommands(build_parser()):
        assert f"`collide {name}`" in text
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue  # every command has -h; the page says so once
            for option in action.option_strings:
                assert f"`{option}" in text or f", {option}" in text, (name, option)


def test_the_config_reference_lists_every_key_each_experiment_reads():
    from collide.experiments.registry import EXPERIMENTS, experiment

    text = _generate().config_references()
    for name in EXPERIMENTS:
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        config = experiment(name).Config()
        for key, *_ in config.keys_read():
            assert f"| `{key}` |" in section, (name, key)
        for key in config.NOT_USED:  # apart, not among the keys it reads
            assert f"| `{key}` |" not in section and f"| `{key}." not in section, (name, key)
        assert ("Inherited and not read" in section) == bool(config.NOT_USED), name


def test_benchmark_figures_leave_matplotlib_as_they_found_it():
    """Drawn on Figure objects: pyplot is never imported, so no backend is chosen for the caller."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('g', {str(DOCS / 'generate.py')!r})\n"
            "g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)\n"
            "out = g.benchmark_figures()\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n"
            "print(out.count('<img '))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    expected = bool(results.get("batching")) + bool(results.get("knn")) + len(results.get("solver", []))
    assert int(done.stdout.strip()) == expected


def test_a_results_block_is_filled_from_the_reference_table():
    gen = _generate()
    frame = pd.read_parquet(ROOT / "data" / "reference" / "mnist-mlp.parquet")
    filled = gen.fill(f"<!-- generated: table2-mlp -->\n_{PLACEHOLDER} (`make docs`)._\n<!-- end generated -->")
    assert PLACEHOLDER not in filled
    for r in frame.to_dict("records"):
        line = next(x for x in filled.splitlines() if x.startswith(f"| {r['row']} | {r['method']} |"))
        assert f"| {r['dataset_avg_distance']:.2f} |" in line and f"| {r['vertex_avg_distance']:.2f} (" in line


@pytest.mark.slow
def test_the_site_builds_strictly_with_every_block_filled(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-5000:]
    pages = list(site.rglob("*.html"))
    for page in pages:
        assert PLACEHOLDER not in page.read_text(), page
    assert "vertex avg dist" in (site / "experiments" / "mnist" / "index.html").read_text()
    assert "--results-root" in (site / "reference" / "cli" / "index.html").read_text()
    assert "find_polytope" in (site / "reference" / "api" / "index.html").read_text()


def test_the_scan_costs_block_shows_scan_json_as_measured(tmp_path):
    stability = {"examples": 200.0, "spearman": 0.8125, "top_overlap": 0.5, "top_k": 2.0,
                 "top10": {"examples": 200.0, "spearman": 0.8125, "top_overlap": 0.65, "top_k": 20.0}}
    results = {"machine": {"date": "D", "cpu": "CPU", "cores": 2, "load_average": [1.0]}, "layer": "relu1",
               "stages": {"gradient_s": 0.25, "exact_screen_s": 1.5, "certify_s": 12.0, "test_set_hours": 4.86,
                          "test_set_note": "N"},
               "across_training_seeds": {"radius seed 0 vs 2": stability},
               "across_solver_seeds": {"radius seed 0 vs 1": {**stability, "spearman": 1.0}}}
    path = tmp_path / "scan.json"
    path.write_text(json.dumps(results))
    text = _generate().scan_costs(path)
    assert "| screen: batched gradient polytopes | 0.25 |" in text and "4.9 hours" in text
    assert "| training seeds: radius seed 0 vs 2 | 200 | 0.812 | 0.50 (2) | 0.65 (20) |" in text
    assert "| solver seeds, training seed 0: radius seed 0 vs 1 | 200 | 1.000 |" in text
    assert "Not measured" in _generate().scan_costs(tmp_path / "none.json")
    results["experiment"] = {"command": "flows.cli run scan --set targets_per_class=20", "examples": 200,
                             "per_job": 100, "seconds": 224.0, "per_example_s": 1.12, "test_set_hours": 3.11,
                             "workers": 2,
                             "machine": {"date": "E", "load_average": [0.5], "load_average_after": [1.5]}}
    path.write_text(json.dumps(results))
    text = _generate().scan_costs(path)
    assert "200 test images in 224 s, 1.12 s an image; the whole test set at that rate: 3.1 hours" in text
    assert "over 2 local Dask workers, 100 examples a job" in text
    results["stages"].update(scan_per_example_s=0.36, scan_threads=2, test_set_hours=1.25)
    path.write_text(json.dumps(results))
    assert "measured 2 at a time: 0.36 s an example. The whole test set at that rate: 1.2 hours" in \
        _generate().scan_costs(path)


def test_the_set_solvers_block_shows_set_solvers_json_as_measured(tmp_path):
    def run(median: float, radius: float) -> dict:
        return {"seconds": [median - 1, median, median + 2], "median_s": median, "radius": radius, "dim": 737,
                "dim_method": "ball"}

    results = {"machine": {"date": "D", "cpu": "C", "cores": 2, "load_average": [1.0], "load_average_after": [2.0]},
               "reps": 3, "ipm_region_rows": 1000,
               "sets": [{"model": "lenet5", "layer": "relu3", "inputs": 784, "region_rows": 9064,
                         "default": "interior point", "simplex": run(21.0, 1.8e-3), "interior point": run(12.0, 1.8e-3),
                         "speedup": 1.75, "radius_rel_diff": 1e-10, "same_dim": True}]}
    path = tmp_path / "set_solvers.json"
    path.write_text(json.dumps(results))
    text = _generate().set_solvers(path)
    assert ("| lenet5 | `relu3` | the first 7 | 784 | 9,064 | interior point | 21.00 s (20.00-23.00) "
            "| 12.00 s (11.00-14.00) | 1.75x | 1.0e-10 | 737 (ball) |") \
        in text and "from 1,000 region rows" in text and "3 runs of each solver" in text
    results["sets"][0].update(target_index=3, target_label=0)
    path.write_text(json.dumps(results))
    assert "| lenet5 | `relu3` | test 3 (a 0) | 784 |" in _generate().set_solvers(path)
    assert "fewer than" not in text  # a file from before the hand-over names none
    results["simplex_tail_rows"] = 32
    path.write_text(json.dumps(results))
    assert "handing the simplex the rounds after one that adds fewer than 32" in _generate().set_solvers(path)
    results["sets"][0].update(same_dim=False, **{"interior point": {**run(12.0, 0.0), "dim": 700}})
    path.write_text(json.dumps(results))
    assert "737 (ball) against 700 (ball)" in _generate().set_solvers(path)
    assert "Not measured" in _generate().set_solvers(tmp_path / "none.json")
