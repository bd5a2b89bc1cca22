"""Every config key says what it is, in one place (the class's ``Attributes:``), and the
command line shows it; the loader lives apart from the stage configs and no module
reaches for another's private names."""

import ast
import dataclasses

import pytest

from collide.config import config_keys
from collide.config_loader import descriptions, field_types
from collide.errors import ConfigError
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


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_the_keys_an_experiment_does_not_read_are_its_own_and_shown_apart(name, capsys):
    """A new user's trial: `config show scan` listed target_label, which a scan never reads."""
    config = EXPERIMENTS[name].Config()
    keys = [k for k, *_ in config_keys(config)]
    for unused in config.NOT_USED:  # each names a key there is (a renamed field would leave it naming nothing)
        assert any(k == unused or k.startswith(f"{unused}.") for k in keys), (name, unused)
    if not config.NOT_USED:  # every key listed (`config show imagenet` builds VGG-16 for its layers: 6 s)
        assert config.keys_read() == config_keys(config)
        return
    assert main(["config", "show", name]) == 0
    shown = capsys.readouterr().out
    listed = {line.split()[0] for line in shown.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert not [k for k in listed for u in config.NOT_USED if k == u or k.startswith(f"{u}.")]
    assert f"inherited and not read by {name} (a value for one is refused): {', '.join(config.NOT_USED)}" in shown


def test_a_value_for_a_key_the_experiment_does_not_read_is_refused_and_its_default_is_not(tmp_path):
    from collide.experiments.configs.scan import ScanExperiment

    config = ScanExperiment()
    assert config.unused_given({"target_label": 3, "paper": {"lr": 0.5}, "exact": {"proximity": 0.5},
                                "gradient": {"lr": 0.5}}) == ["target_label", "paper.lr"]
    assert config.unused_given(config.to_dict()) == []  # `config show --json`'s file, every key at its default
    assert config.unused_given({"target_label": 7, "split": "train"}) == []
    from collide.experiments.configs.spread import SpreadExperiment

    assert SpreadExperiment().unused_given({"train": {"seed": 2, "epochs": 3}}) == ["train.seed"]
    # What the command line and the flow build their config with.
    with pytest.raises(ConfigError, match="target_label: not read by this experiment"):
        ScanExperiment.from_request({"target_label": 3})
    assert ScanExperiment.from_request({"target_label": 7, "split": "train"}).split == "train"


def test_the_command_line_refuses_a_key_the_experiment_does_not_read(tmp_path, capsys):
    assert main(["run", "scan", "--no-prefect", "--results-root", str(tmp_path / "r"), "--set", "target_label=3"]) == 2
    said = capsys.readouterr().err
    assert "target_label: not read by this experiment" in said and "drop it" in said
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_no_key_an_experiment_calls_unread_is_read_by_its_module(name):
    """A key listed as not read that the experiment's own module reads would be refused
    for nothing (a review: the lists are kept by hand)."""
    import inspect
    import re

    module = EXPERIMENTS[name]
    source = inspect.getsource(module)
    read = [k for k in module.Config.NOT_USED if re.search(rf"\bconfig\.{re.escape(k)}\b", source)]
    assert not read, f"{name} reads {read}, which its config lists as NOT_USED"
