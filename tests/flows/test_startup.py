"""The command line starts without the heavy libraries (issue 23 §7): help, listing the
experiments and refusing a bad command import none of torch, pandas, Prefect, Dask or
matplotlib, and no experiment module."""

import json
import subprocess
import sys

HEAVY = ("torch", "pandas", "prefect", "dask", "matplotlib", "scipy", "zarr")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_importing_the_cli_and_building_its_parser_loads_nothing_heavy():
    loaded = _loaded_after("import flows.cli\nflows.cli.build_parser()")
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}
    assert not {m for m in loaded if m.startswith("collide.experiments.") and m.split(".")[-1] not in
                ("registry",)}


def test_help_answers_without_importing_torch_pandas_or_prefect():
    code = ("import contextlib, io\nfrom flows.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "assert 'run' in out.getvalue() and 'exit codes' in out.getvalue()")
    loaded = _loaded_after(code)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}


def test_the_registry_lists_names_and_imports_an_experiment_only_when_asked():
    loaded = _loaded_after("from collide.experiments.registry import EXPERIMENTS, SUMMARIES\n"
                           "assert 'mnist' in EXPERIMENTS and list(EXPERIMENTS) == list(SUMMARIES)")
    assert "collide.experiments.mnist" not in loaded and "torch" not in loaded
    loaded = _loaded_after("from collide.experiments.registry import EXPERIMENTS\nEXPERIMENTS['scan']")
    assert {"collide.experiments.scan", "collide.experiments.mnist"} <= loaded
    assert "collide.experiments.spread" not in loaded  # only what scan needs


def test_importing_collide_loads_torch_only_when_its_api_is_used():
    assert "torch" not in _loaded_after("import collide\nimport collide.errors")
    assert "torch" in _loaded_after("import collide\ncollide.find_polytope")


def test_status_reads_the_stores_without_torch_or_prefect(tmp_path):
    code = ("import contextlib, io\nfrom flows.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    assert main(['status', '--results-root', {str(tmp_path)!r}]) == 0\n"
            "assert 'no results under' in out.getvalue()")
    loaded = _loaded_after(code)
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "prefect", "dask", "matplotlib")}


def test_an_unknown_experiment_is_refused_without_importing_any():
    code = ("import contextlib, io\nfrom flows.cli import main\n"
            "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
            "    try:\n        main(['run', 'imagenet9'])\n"
            "    except SystemExit as exc:\n        assert exc.code == 2\n"
            "assert \"invalid choice: 'imagenet9'\" in err.getvalue()")
    loaded = _loaded_after(code)
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}
    assert not {m for m in loaded if m.startswith("collide.experiments.") and not m.endswith(".registry")}


def _cli(argv: list[str], *, code: int, said: str, stream: str = "stdout") -> set[str]:
    """The modules loaded by ``main(argv)``, which must return ``code`` and print ``said``."""
    probe = ("import contextlib, io\nfrom flows.cli import main\n"
             f"with contextlib.redirect_{stream}(io.StringIO()) as out:\n"
             f"    assert main({argv!r}) == {code}\n"
             f"assert {said!r} in out.getvalue(), out.getvalue()")
    return _loaded_after(probe)


def test_config_show_lists_keys_and_layers_without_importing_torch_pandas_or_prefect():
    loaded = _cli(["config", "show", "mnist"], code=0, said="usable layers of the default model (layer=...): fc1")
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}
    assert "collide.experiments.mnist" not in loaded  # the config's own module answers
    loaded = _cli(["config", "show", "patches", "--json"], code=0, said='"layer": "fc1"')
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}


def test_a_refused_config_imports_no_experiment_and_nothing_heavy(tmp_path):
    """Unknown key, out-of-range value, bad JSON, a config file with a bad key: exit 2 at once."""
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('{"nope": 1}')
    for argv, said in ((["run", "mnist", "--set", "nope=1"], "unknown key 'nope'"),
                       (["run", "baselines", "--set", "ball.n=0"], "expected n >= 1 points"),
                       (["run", "frontier", "--set", "frontier.epsilons=[-1]"], "expected every epsilon finite"),
                       (["run", "spread", "--set", "seeds=[]"], "expected one or more distinct seeds"),
                       (["run", "mnist", "--set", "threads=x"], "threads: expected an integer"),
                       (["run", "scan", "--config", str(bad_file)], "unknown key 'nope'")):
        loaded = _cli(argv, code=2, said=said, stream="stderr")
        assert not {m for m in loaded if m.split(".")[0] in HEAVY}, argv
        assert not {m for m in loaded if m.startswith("collide.experiments.") and m.split(".")[2] not in
                    ("registry", "contract", "configs")}, argv


def test_every_experiment_config_module_imports_nothing_heavy():
    from collide.experiments.registry import SUMMARIES

    code = "\n".join(f"import collide.experiments.configs.{name}" for name in SUMMARIES)
    loaded = _loaded_after(code + "\nimport collide.comparisons.baseline_configs, collide.comparisons.frontier_config"
                           "\nimport collide.results.run_record")
    assert not {m for m in loaded if m.split(".")[0] in (*HEAVY, "numpy", "highspy")}
