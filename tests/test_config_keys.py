"""Every config key says what it is, in one place (the class's ``Attributes:``), and the
command line shows it; the loader lives apart from the stage configs and no module
reaches for another's private names."""

import ast
import dataclasses

import pytest

from collide.config import config_keys
from collide.config_loader import descriptions, field_types
from collide.experiments.registry import EXPERIMENTS
from flows.cli import main
from tests.support import PROJECT


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_key_of_every_experiment_has_a_one_line_description(name):
    keys = config_keys(EXPERIMENTS[name].Config())
    assert all(len(k) == 4 for k in keys)
    missing = [key for key, _, _, text in keys if not text.strip()]
    assert not missing, f"{name}: keys without a description: {missing}"
    assert all("\n" not in text for *_, text in keys)


def test_descriptions_name_only_fields_that_exist():
    """A description left behind by a renamed field would describe nothing: refuse it."""
    seen: set[type] = set()
    todo = [module.Config for module in EXPERIMENTS.values()]
    while todo:
        kind = todo.pop()
        if kind in seen:
            continue
        seen.add(kind)
        fields = {f.name for f in dataclasses.fields(kind)}
        assert set(descriptions(kind)) <= fields, (kind.__name__, set(descriptions(kind)) - fields)
        todo += [t for t in field_types(kind).values() if isinstance(t, type) and dataclasses.is_dataclass(t)]
    assert len(seen) > 15  # the ten experiments' configs and the stage configs they nest


def test_config_keys_walks_nested_configs_with_their_descriptions():
    from collide.experiments.mnist import MnistExperiment

    keys = {k: (kind, default, text) for k, kind, default, text in config_keys(MnistExperiment())}
    assert keys["exact.proximity"][:2] == ("float", 0.5)
    assert keys["exact.proximity"][2] == descriptions(type(MnistExperiment().exact))["proximity"]
    assert keys["gradient.loss"][0] == "one of paper, penalty"


def test_config_show_and_run_help_print_each_keys_description(capsys):
    from collide.experiments.mnist import MnistExperiment

    text = dict((k, t) for k, _, _, t in config_keys(MnistExperiment()))["exact.proximity"]
    assert main(["config", "show", "mnist"]) == 0
    shown = capsys.readouterr().out
    assert "exact.proximity" in shown and text in shown
    assert main(["run", "mnist", "--help"]) == 0
    assert text in capsys.readouterr().out


def test_no_module_imports_private_names_of_another_modules_config():
    """The experiments' config base and the config checks are public; nothing reaches into
    collide.config (or another module) for a name that starts with an underscore."""
    offenders = []
    for path in sorted((PROJECT / "collide").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("collide.config"):
                offenders += [(path.name, a.name) for a in node.names if a.name.startswith("_")]
    assert not offenders
