"""prefect.yaml deploys every registered experiment; the CLI explains itself and refuses bad input."""

import socket

import pytest
import yaml

from flows.cli import build_parser, main
from flows.registry import EXPERIMENTS
from flows.serve import PROJECT, read_deployments


def test_every_experiment_is_deployed_on_a_cron_schedule():
    from prefect.schedules import Cron

    deployments = read_deployments(PROJECT / "prefect.yaml")
    entrypoints = {d["entrypoint"] for d in deployments}
    assert entrypoints == {e.entrypoint for e in EXPERIMENTS.values()}
    assert len({d["name"] for d in deployments}) == len(deployments)
    for d in deployments:
        assert d["schedules"], d["name"]
        for s in d["schedules"]:
            Cron(s["cron"], timezone=s["timezone"])  # raises on a malformed cron
        assert isinstance(d["parameters"]["config"], dict)
    for e in EXPERIMENTS.values():
        flow = e.load("flow")
        assert (PROJECT / e.entrypoint.split(":")[0]).is_file()
        config = e.load("config").from_dict(next(d for d in deployments if d["entrypoint"] == e.entrypoint)
                                            ["parameters"]["config"])
        assert flow.name and config.digest()


def test_deployments_that_cannot_be_served_are_named(tmp_path):
    from flows.serve import ServeError

    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump({"deployments": [{"name": "x", "entrypoint": "a.py:f",
                                                     "schedules": [{"interval": 60}]}]}))
    with pytest.raises(ServeError, match="expected cron schedules"):
        read_deployments(path)
    with pytest.raises(ServeError, match="does not exist"):
        read_deployments(tmp_path / "missing.yaml")


@pytest.mark.parametrize("command", ["run", "tables", "serve", "status"])
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
