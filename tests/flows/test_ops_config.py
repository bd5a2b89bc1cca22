"""prefect.yaml deploys every registered experiment; the CLI explains itself and refuses bad input."""

import socket

import pytest
import yaml

from collide.experiments.registry import EXPERIMENTS
from flows.cli import build_parser, main
from flows.serve import PROJECT, _concurrency, read_deployments


def test_every_experiment_is_deployed_on_a_cron_schedule():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    deployments = read_deployments(PROJECT / "prefect.yaml")
    assert {d["parameters"]["experiment"] for d in deployments} == set(EXPERIMENTS)
    assert len({d["name"] for d in deployments}) == len(deployments)
    for d in deployments:
        assert d["schedules"], d["name"]
        for s in d["schedules"]:
            Cron(s["cron"], timezone=s["timezone"])  # raises on a malformed cron
        assert isinstance(d["parameters"]["config"], dict)
        assert (PROJECT / d["entrypoint"].split(":")[0]).is_file()
        flow = load_flow_from_entrypoint(str(PROJECT / d["entrypoint"]))
        assert set(d["parameters"]) <= set(flow.parameters.properties), d["name"]
        # As the flow builds it: a deployment that sets a key its experiment does not read fails here.
        config = EXPERIMENTS[d["parameters"]["experiment"]].Config.from_request(d["parameters"]["config"])
        assert config.digest()
        # Overlapping schedules: a second run of a deployment waits for the first.
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}, d["name"]
        assert _concurrency(d).limit == 1


def test_adding_an_experiment_takes_one_module_one_registry_entry_one_deployment():
    """Every registered experiment is one module of collide/experiments that satisfies the
    typed experiment protocol; the contributing guide says how to add one."""
    import dataclasses
    import inspect

    from collide.experiments.contract import Experiment, ExperimentConfig
    from collide.experiments.registry import SUMMARIES, config

    assert list(EXPERIMENTS) == list(SUMMARIES) and len(EXPERIMENTS) == 14
    for name, module in EXPERIMENTS.items():
        assert module.__name__ == f"collide.experiments.{name}"
        assert isinstance(module, Experiment), name  # NAME, Config and every hook the engine calls
        assert module.NAME == name and module.Config().name  # defaults build
        assert issubclass(module.Config, ExperimentConfig) and dataclasses.is_dataclass(module.Config), name
        assert module.Config.__dataclass_params__.frozen, name  # type: ignore[attr-defined]
        # Its config class lives in collide/experiments/configs/NAME.py, where the CLI builds it without torch.
        assert module.Config is config(name) and module.Config.__module__ == f"collide.experiments.configs.{name}"
        # The hooks take what the engine passes, by the names it passes them.
        for hook, wanted in (("validate", {"config"}), ("prepare", {"config", "progress"}),
                             ("plan", {"context", "config"}), ("solve", {"job", "context", "config", "progress"})):
            params = inspect.signature(getattr(module, hook)).parameters
            assert wanted <= set(params), (name, hook, list(params))
            assert params["config"].kind is inspect.Parameter.KEYWORD_ONLY, (name, hook)
    guide = (PROJECT / "docs" / "contributing.md").read_text()
    assert "Adding an experiment" in guide and "collide/experiments/registry.py" in guide
    assert "collide/experiments/configs/NAME.py" in guide


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_the_layers_a_config_lists_without_its_model_are_the_models(name):
    """`collide config show` lists the MNIST models' layers from the names written out in
    collide/experiments/configs/mnist.py (no torch): they are what the built models offer."""
    module = EXPERIMENTS[name]
    configs = [module.Config()]
    if name not in ("imagenet", "model", "profile", "activations", "regularisers"):  # their own archs; the MLP only
        configs.append(module.Config.from_dict({"train": {"arch": "lenet5", "seed": 5}}))
    for config in configs:
        listed = config.listed_layers()
        assert listed is None or listed == module.layers(config), (name, listed)
    assert (configs[0].listed_layers() is None) == (name in ("imagenet", "model")), name


def test_deployments_that_cannot_be_served_are_named(tmp_path):
    from flows.serve import ServeError

    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump({"deployments": [{"name": "x", "entrypoint": "a.py:f",
                                                     "schedules": [{"interval": 60}]}]}))
    with pytest.raises(ServeError, match="expected cron schedules"):
        read_deployments(path)
    with pytest.raises(ServeError, match="does not exist"):
        read_deployments(tmp_path / "missing.yaml")


@pytest.mark.parametrize("command", ["run", "tables", "serve", "status", "verify"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--results-root" in text or "--port" in text


def test_top_level_help_lists_the_commands_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for word in ("run", "tables", "serve", "status", "exit codes"):
        assert word in text


def test_serve_refuses_a_taken_port_before_starting_anything(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", "--port", str(port), "--home", str(tmp_path / "home")]) == 2
    assert "in use" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()
    assert main(["serve", "--file", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_each_experiments_help_lists_its_keys_types_defaults_and_layers(name, capsys):
    assert main(["run", name, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--no-prefect" in text  # the run options, then the experiment's own keys
    keys = [line.split()[0] for line in text.splitlines() if line.startswith("  ") and "default " in line]
    config = EXPERIMENTS[name].Config()
    assert {"name", "layer", "n_vertices", "sample.n_samples"} <= set(keys)
    assert f'default "{config.layer}"' in text and "usable layers" in text
    assert EXPERIMENTS[name].layers(config) and config.layer in text.split("usable layers")[1]
    assert main(["config", "show", name]) == 0
    shown = capsys.readouterr().out
    # The gradient solver's keys where the experiment reads them; listed as not read where it does not.
    assert ("  gradient.max_steps " in shown) == ("gradient" not in config.NOT_USED), name
    unread = [line for line in shown.splitlines() if line.startswith("inherited and not read")]
    assert any("gradient" in line.split(": ")[-1].split(", ") for line in unread) == ("gradient" in config.NOT_USED)


def test_patch_layer_follows_the_dataset():
    patches = EXPERIMENTS["patches"]
    assert patches.Config().layer == "fc1"  # LeNet-5 on MNIST
    assert patches.Config.from_dict({"dataset": "folder"}).layer == "fc6"  # VGG-16 on a folder
    assert patches.Config.from_dict({"dataset": "folder", "layer": "fc7"}).layer == "fc7"
