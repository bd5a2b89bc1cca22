"""Configuration errors say which key, what type, and the closest valid key."""

import re

import pytest

from collide.config import RowSpec
from collide.errors import ConfigError
from collide.experiments.imagenet import ImagenetExperiment
from collide.experiments.mnist import MnistExperiment
from collide.experiments.patches import PatchExperiment
from collide.experiments.scan import ScanExperiment


@pytest.mark.parametrize(("raw", "message"), [
    ({"n_vertices": "abc"}, "n_vertices: expected an integer, got 'abc' (str)"),
    ({"n_vertices": 2.5}, "n_vertices: expected an integer, got 2.5 (float)"),
    ({"n_vertices": True}, "n_vertices: expected an integer, got True (bool)"),
    ({"allow_download": 1}, "allow_download: expected true or false, got 1 (int)"),
    ({"allow_download": "yes"}, "allow_download: expected true or false, got 'yes' (str)"),
    ({"layer": 3}, "layer: expected a string, got 3 (int)"),
    ({"gradient": {"lr": "fast"}}, "gradient.lr: expected a number, got 'fast' (str)"),
    ({"train": {"train_limit": "all"}}, "train.train_limit: expected an integer or null, got 'all' (str)"),
    ({"rows": "other"}, "rows: expected a list of RowSpec values, got 'other' (str)"),
    ({"gradient": 5}, "gradient: expected a GradientConfig (a mapping of its fields), got 5 (int)"),
    ({"gradient": {"lr": -1}}, "gradient: expected lr > 0, got -1"),
])
def test_a_wrong_value_names_its_key_and_type(raw, message):
    with pytest.raises(ConfigError) as err:
        MnistExperiment.from_dict(raw)
    assert str(err.value) == message


@pytest.mark.parametrize(("raw", "key", "owner", "closest"), [
    ({"layers": "relu1"}, "'layers'", "MnistExperiment", "'layer'"),
    ({"gradient": {"lrr": 0.1}}, "'gradient.lrr'", "GradientConfig (gradient)", "'gradient.lr'"),
    ({"sample": {"n_sample": 10}}, "'sample.n_sample'", "SampleConfig (sample)", "'sample.n_samples'"),
    ({"max_steps": 10}, "'max_steps'", "MnistExperiment", "'gradient.max_steps'"),  # one level too high
    ({"rows": [{"methd": "exact", "init": "other"}]}, "'rows[0].methd'", "RowSpec (rows[0])", "'rows[0].method'"),
])
def test_an_unknown_key_names_its_config_and_the_closest_valid_key(raw, key, owner, closest):
    with pytest.raises(ConfigError) as err:
        MnistExperiment.from_dict(raw)
    text = str(err.value)
    assert f"unknown key {key}" in text and f"for {owner}" in text and f"did you mean {closest}?" in text


def test_valid_values_pass_and_round_trip():
    config = MnistExperiment.from_dict({
        "n_vertices": 4, "allow_download": False, "gradient": {"lr": 1, "max_steps": 1e4},
        "train": {"train_limit": None}, "rows": [{"method": "exact", "init": "other"}],
    })
    assert config.gradient.max_steps == 10_000 and isinstance(config.gradient.max_steps, int)
    assert config.gradient.lr == 1  # an int for a float field is kept as given: digests stay put
    assert config.rows == (RowSpec("exact", "other"),)
    for kind in (MnistExperiment, PatchExperiment, ImagenetExperiment):
        default = kind()
        again = kind.from_dict(default.to_dict())
        assert again == default and again.digest() == default.digest()


def test_string_rows_stay_strings():
    assert PatchExperiment.from_dict({"rows": ["other"]}).rows == ("other",)
    assert ImagenetExperiment.from_dict({"rows": ("other", "target")}).rows == ("other", "target")
    with pytest.raises(ConfigError, match=r"rows\[1\]: expected a string, got 3 \(int\)"):
        PatchExperiment.from_dict({"rows": ["other", 3]})


def test_a_nested_dict_overrides_the_field_default_not_the_class_default():
    # The patch experiment trains LeNet-5 by default: changing its epochs must keep that.
    config = PatchExperiment.from_dict({"train": {"epochs": 2}, "gradient": {"max_steps": 100}})
    assert config.train.arch == "lenet5" and config.train.epochs == 2
    assert config.gradient.lr == PatchExperiment().gradient.lr and config.gradient.max_steps == 100


def test_a_field_added_later_is_checked_by_its_annotation():
    import dataclasses

    from collide.experiments.contract import ExperimentConfig

    @dataclasses.dataclass(frozen=True)
    class Later(ExperimentConfig):
        count: int = 1
        ratio: float | None = None

    assert Later.from_dict({"ratio": 2}).ratio == 2
    with pytest.raises(ConfigError, match=r"ratio: expected a number or null, got 'x' \(str\)"):
        Later.from_dict({"ratio": "x"})
    with pytest.raises(ConfigError, match="did you mean 'count'"):
        Later.from_dict({"cout": 2})


@pytest.mark.parametrize(("raw", "message"), [
    ({"targets_per_batch": 0}, "expected targets_per_batch >= 1, got 0"),
    ({"rank_by": "mean_width"}, "rank_by=mean_width, but the screen measures no widths: rank by the radius, and "
                                "measure widths of the most and least blind with --set certify=K"),
    ({"rank_by": "radius", "exact_sizes": "never"}, "rank_by=radius, but exact_sizes=never measures no exact set"),
    ({"exact_sizes": "sometimes"}, "exact_sizes"),
    ({"rows": [{"method": "exact", "init": "target"}]}, "expected rows"),
])
def test_a_scan_that_cannot_run_as_asked_is_refused_with_the_fix(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ScanExperiment.from_dict(raw)


def test_a_list_that_is_not_json_says_how_to_write_one():
    """A new user's trial: "expected a list of a string values", and no word of JSON's quotes."""
    from collide.experiments.configs.activations import ActivationsExperiment

    with pytest.raises(ConfigError) as err:
        ActivationsExperiment.from_dict({"activations": "[relu,tanh]"})
    assert str(err.value) == ("activations: expected a list of strings, got '[relu,tanh]' (str) (a list is JSON, "
                              "strings in double quotes: [\"a\",\"b\"]; on the command line inside single quotes, "
                              "--set 'activations=[\"a\",\"b\"]')")
    with pytest.raises(ConfigError, match=r"expected a list of integers, .*: \[0,1\]; .* --set 'seeds=\[0,1\]'"):
        ActivationsExperiment.from_dict({"seeds": "[0;1]"})
