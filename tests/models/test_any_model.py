"""Any model, any ReLU call: call sites tapped where they are, polytopes colliding there,
refusals that say why (issue "Any model, any layer")."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import collide
from collide.config import ExactConfig, GradientConfig
from collide.errors import ConfigError, DataError, LayerError
from collide.models.external import Normalized
from collide.piecewise import budget, linearise
from collide.solvers import exact
from tests.any_models import functional_cnn, gelu_cnn, piecewise_mlp, randomize_batch_norm
from tests.support import PROJECT
from tests.tolerances import LP_STORED_REL_ERROR_F64, UNCHANGED

# The gradient solver's collision criterion (GradientConfig.rel_tol), recomputed by an
# independent forward pass: float32 storage may move it by rounding only.
GRADIENT_REL_TOL = 1e-2 + 1e-5


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None)
    return randomize_batch_norm(net, 1).eval()


def _block_preactivations(block: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A BasicBlock's two ReLU inputs, computed by hand: relu#0 after bn1, relu#1 after the sum."""
    first = block.bn1(block.conv1(h))
    identity = h if block.downsample is None else block.downsample(h)
    return first, block.bn2(block.conv2(torch.relu(first))) + identity


def _resnet_oracle(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every ReLU call's input of a torchvision ResNet-18, by its collide name, by hand."""
    stem = net.bn1(net.conv1(x))
    out = {"relu": stem}
    h = net.maxpool(torch.relu(stem))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for k, block in enumerate(getattr(net, stage)):
            first, second = _block_preactivations(block, h)
            out[f"{stage}.{k}.relu#0"], out[f"{stage}.{k}.relu#1"] = first, second
            h = torch.relu(second)
    return out


def test_resnet_reused_relus_are_tapped_at_each_call(resnet18):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        oracle = _resnet_oracle(resnet18, x)
    names = [s.name for s in collide.layers(resnet18, x[0])]
    assert names == list(oracle)  # 17 calls, in forward order, each named once
    assert all(isinstance(m, nn.ReLU) and m.inplace for n, m in resnet18.named_modules() if n.endswith("relu"))
    for name, expected in oracle.items():
        assert (expected < 0).any() and (expected > 0).any(), name
        got = collide.preactivation(resnet18, x, name)
        assert torch.allclose(got, expected.flatten(1), atol=UNCHANGED, rtol=UNCHANGED), name
    # All at once in one forward pass: the in-place ReLUs must not overwrite what was taken.
    with torch.no_grad(), collide.tap(resnet18, list(oracle), x[0]) as t:
        resnet18(x)
    for name, expected in oracle.items():
        assert torch.allclose(t[name], expected, atol=UNCHANGED, rtol=UNCHANGED), name


def test_a_reused_module_by_its_bare_name_is_refused_with_its_calls(resnet18):
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(LayerError, match=r"'layer1\.0\.relu' runs 2 times .*layer1\.0\.relu#0, layer1\.0\.relu#1"):
        collide.preactivation(resnet18, x, "layer1.0.relu")
    with pytest.raises(LayerError, match=r"runs 2 time\(s\) .*calls count from 0"):
        collide.preactivation(resnet18, x, "layer1.0.relu#2")
    with pytest.raises(LayerError, match=r"'conv1' is a Conv2d, not an activation; layers that work: relu, layer1"):
        collide.preactivation(resnet18, x, "conv1")
    # A module called once: NAME#0 is NAME.
    assert collide.layers(resnet18, x[0])[0].name == "relu"
    assert torch.equal(collide.preactivation(resnet18, x, "relu#0"), collide.preactivation(resnet18, x, "relu"))


def _functional_oracle(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    a = net.bn1(net.conv1(x))
    b = net.block.bn(net.block.conv(torch.relu(a))) + torch.relu(a)
    c = F.max_pool2d(torch.relu(b), 2)
    d = net.fc1(torch.relu(c).flatten(1))
    e = net.fc2(torch.relu(d))
    return {"relu()#0": a, "block.relu()": b, "relu()#1": c, "relu()#2": d, "act#0": e,
            "act#1": net.fc2b(torch.relu(e))}


def test_functional_and_in_place_relus_have_stable_names_and_true_values():
    net = functional_cnn()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sites = collide.layers(net, x[0])
    assert [(s.name, s.kind) for s in sites] == [
        ("relu()#0", "function"), ("block.relu()", "function"), ("relu()#1", "function"),
        ("relu()#2", "function"), ("act#0", "module"), ("act#1", "module"),
    ]
    assert [s.name for s in collide.layers(functional_cnn(), x[1])] == [s.name for s in sites]  # stable
    with torch.no_grad():
        oracle = _functional_oracle(net, x)
    assert (oracle["relu()#2"] < 0).any(), "the in-place ReLU must have negatives to overwrite"
    for name, expected in oracle.items():
        assert torch.allclose(collide.preactivation(net, x, name), expected.flatten(1), atol=UNCHANGED), name
    with pytest.raises(LayerError, match=r"'relu\(\)' runs 3 times .*relu\(\)#0, relu\(\)#1, relu\(\)#2"):
        collide.preactivation(net, x, "relu()")


def test_a_polytope_at_a_resnet_call_site_collides_there(resnet18):
    target = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    layer = "layer2.0.relu#1"  # after the residual sum, with the downsampling branch
    poly = collide.find_polytope(resnet18, layer, target, n_vertices=3,
                                 config=GradientConfig(max_steps=600))
    assert poly.n_valid >= 2, poly.reasons
    with torch.no_grad():
        net = resnet18.double()
        try:
            post_t = torch.relu(_resnet_oracle(net, target[None].double())[layer]).flatten()
            post_v = torch.relu(_resnet_oracle(net, poly.vertices[poly.valid].double())[layer]).flatten(1)
        finally:
            resnet18.float()
    rel = (post_v - post_t).norm(dim=1) / post_t.norm()
    assert (rel <= GRADIENT_REL_TOL).all(), rel
    assert ((poly.vertices[poly.valid] - target).flatten(1).norm(dim=1) > 0.1).all()  # they moved
    m = collide.measure(resnet18, layer, poly, n_samples=200)
    assert m.n_samples == 200 and 0 <= m.success_rate <= 1


def test_activations_without_polytopes_are_refused_with_the_reason():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mobilenet = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.rand(3, 32, 32)
    # Every ReLU6 of MobileNetV2 is a site, by every method (its flat pieces collide exactly).
    sites = collide.layers(mobilenet, x)
    assert len(sites) == 35 and {s.op for s in sites} == {"ReLU6"}
    assert all(s.methods == ("gradient", "paper", "exact") for s in sites)
    image = torch.rand(1, 8, 8)
    with pytest.raises(LayerError, match=r"'1' is a GELU call: the exact LP .* use method='gradient'"):
        collide.find_polytope(gelu_cnn(), "1", image, method="exact")
    with pytest.raises(LayerError, match="LeakyReLU is injective: only inputs with exactly equal pre-activations"):
        collide.find_polytope(piecewise_mlp(), "2", torch.rand(24))
    # A smooth activation before a ReLU layer: gradient collisions exist there, exact ones
    # cannot be computed, and the exact solver says so before any work.
    with pytest.raises(LayerError, match=r"cannot model 1 \(GELU\) before layer '4'.*method='gradient'"):
        collide.find_polytope(gelu_cnn(), "4", image, method="exact")


def _check_exact(net: nn.Module, layer: str, target: torch.Tensor, n: int,
                 config: ExactConfig | None = None) -> collide.Polytope:
    """Exact vertices, every one colliding in float64 by an independent route (tap, then
    ReLU); a polytope of them (a deep unit may be unable to fall below the target's within
    the target's region: such a vertex is optimal and colliding, but not valid)."""
    poly = collide.find_polytope(net, layer, target, n_vertices=n, method="exact", config=config)
    assert poly.outcomes == ("optimal",) * n, poly.outcomes
    assert poly.n_valid >= 2, poly.reasons
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        post_t = collide.preactivation(net64, target[None].double(), layer).clamp_min(0)
        post_v = collide.preactivation(net64, poly.vertices.double(), layer).clamp_min(0)
    rel = (post_v - post_t).norm(dim=1) / post_t.norm()
    assert (rel <= LP_STORED_REL_ERROR_F64).all(), rel
    return poly


def test_exact_vertices_on_a_residual_cnn_with_batch_norm_collide_to_1e_6():
    net = functional_cnn()
    target = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(7))
    piece = linearise.affine_piece(net, "relu()#2", target)
    assert piece.n_relu_rows > 0 and piece.n_pool_rows > 0  # conv, block, pool and fc rows all count
    _check_exact(net, "relu()#2", target, 4)
    _check_exact(net, "act#1", target, 3)  # past a module's second call


def test_exact_models_leaky_and_hardtanh_pieces():
    net = piecewise_mlp()
    target = torch.rand(24, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        hard_in = net[:4](target[None])[0]  # the Hardtanh's input
    # The target's Hardtanh units sit on all three pieces, so each kind of row matters.
    assert (hard_in < -0.3).any() and ((hard_in > -0.3) & (hard_in < 0.3)).any() and (hard_in > 0.3).any()
    piece = linearise.affine_piece(net, "6", target)
    assert piece.n_relu_rows >= 16 + 16  # a sign row per leaky unit, one or two per Hardtanh unit
    _check_exact(net, "6", target, 4)


def test_an_lp_too_large_is_refused_before_any_work(monkeypatch):
    net = functional_cnn()
    target = torch.rand(1, 8, 8)

    def no_work(*_a, **_k):
        raise AssertionError("the LP was built before its size was checked")

    monkeypatch.setattr(exact, "affine_piece", no_work)
    with pytest.raises(ConfigError, match=r"too large: about [\d,]+ rows over 64 input coordinates.*max_entries=1\.00e"
                                          r"\+03.*no smaller square input fits either"):
        collide.find_polytope(net, "relu()#2", target, method="exact", config=ExactConfig(max_entries=1000))


def test_a_normalising_wrapper_keeps_the_models_layer_names(resnet18):
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    wrapped = Normalized(resnet18, mean, std)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert [s.name for s in collide.layers(wrapped, x[0])] == [s.name for s in collide.layers(resnet18, x[0])]
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    expected = collide.preactivation(resnet18, normalised, "layer3.1.relu#0")
    assert torch.allclose(collide.preactivation(wrapped, x, "layer3.1.relu#0"), expected, atol=UNCHANGED)
    assert torch.equal(collide.preactivation(wrapped, x, "net.layer3.1.relu#0"),
                       collide.preactivation(wrapped, x, "layer3.1.relu#0"))


def _collide(*args: str, cwd: Path = PROJECT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def test_collide_layers_lists_call_sites_and_refusals():
    done = _collide("layers", "tests.any_models:functional_cnn", "--input-size", "8", "--channels", "1")
    assert done.returncode == 0, done.stderr
    for line in ("relu()#0", "block.relu()", "relu()#2", "act#1"):
        assert line in done.stdout
    done = _collide("layers", "torchvision:mobilenet_v2", "--input-size", "32")
    assert done.returncode == 0, done.stderr
    assert "35 activation call sites" in done.stdout
    listed = r"features\.0\.2 +ReLU6 +module +32x16x16 +8192 +gradient, paper, exact\n"
    assert re.search(listed, done.stdout), done.stdout
    # An inverted residual block's own calls are passed by (features.3 adds its input back); the
    # block before it has no skip, and its calls are not (collide.skips, tests/test_skips.py).
    assert re.search(r"features\.3\.conv\.0\.2 .*exact  \(passed by\)\n", done.stdout), done.stdout
    assert re.search(r"features\.2\.conv\.0\.2 .*exact\n", done.stdout), done.stdout
    done = _collide("layers", "torchvision:no_such_net", "--input-size", "32")
    assert done.returncode == 2 and "torchvision has no classification model 'no_such_net'" in done.stderr


@pytest.mark.slow
def test_collide_run_model_on_a_users_factory(tmp_path):
    """The CLI end to end: a factory of the user's code, random weights, every row verified."""
    from collide.datasets.folders import bundled_corpus

    images = bundled_corpus(tmp_path / "images", size=16)
    out = tmp_path / "results"
    args = ["run", "model", "--no-prefect", "--model", "tests.any_models:functional_cnn_rgb", "--weights", "random",
            "--layer", "relu()#2", "--image-root", str(images), "--results-root", str(out),
            "--set", "input_size=8", "--set", "targets_per_class=0", "--set", "gradient.max_steps=300",
            "--set", "sample.n_samples=200", "--set", "n_vertices=3"]
    done = _collide(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RANDOM weights" in done.stdout and "paper rows left out" in done.stdout
    import pandas as pd

    table = pd.read_parquet(out / "model.parquet")
    assert list(zip(table["method"], table["init"], strict=True)) == [
        ("gradient", "target"), ("gradient", "other"), ("exact", "target"), ("exact", "other")]
    assert set(table["layer"]) == {"relu()#2"} and table["flags"].str.contains("random-weights").all()
    exact_rows = table[table["method"] == "exact"]
    assert (exact_rows["valid_vertices"] == 3).all() and (exact_rows["max_feature_rel_error"] <= 1e-6).all()
    # The store names the user's factory: verify imports it only when the user names it too.
    refused = _collide("verify", "model", "--results-root", str(out))
    assert refused.returncode == 2 and "--model tests.any_models:functional_cnn_rgb" in refused.stderr
    trust = ("--model", "tests.any_models:functional_cnn_rgb")
    verified = _collide("verify", "model", "--results-root", str(out), *trust)
    assert verified.returncode == 0 and "every row agrees" in verified.stdout, verified.stdout + verified.stderr
    bare = _collide(*[a if a != "relu()#2" else "relu()" for a in args])
    assert bare.returncode == 2 and "relu()#0, relu()#1, relu()#2" in bare.stderr
    # The table file is checked too: an edited success rate is a disagreement.
    edited = table.copy()
    edited.loc[0, "success_rate"] = 0.5 if edited.loc[0, "success_rate"] != 0.5 else 0.25
    edited.to_parquet(out / "model.parquet", index=False)
    caught = _collide("verify", "model", "--results-root", str(out), *trust)
    assert caught.returncode == 1 and "success_rate: table file" in caught.stdout, caught.stdout
    # One image: only its target rows, said so, and no dataset distance to measure.
    one = sorted(images.glob("*/*.png"))[0]
    single = _collide(*[str(one) if a == str(images) else a for a in args[:-2]], "--set", "name=one")
    assert single.returncode == 0, single.stderr[-3000:]
    assert "'other' rows left out: image_root is a single image" in single.stdout
    rows = pd.read_parquet(out / "one.parquet")
    assert list(rows["init"]) == ["target", "target"] and rows["dataset_avg_distance"].isna().all()


def test_a_models_weights_file_is_read_safely_and_checked_by_hash(tmp_path):
    from collide.errors import CheckpointError
    from collide.models.external import build, resolve_model
    from tests.any_models import functional_cnn

    trained = functional_cnn()
    with torch.no_grad():
        trained.fc3.bias.add_(1.0)  # weights the factory does not make
    path = tmp_path / "cnn.pt"
    torch.save(trained.state_dict(), path)
    source = resolve_model("tests.any_models:functional_cnn", str(path), mean=[0.5], std=[0.25])
    model = build(source)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), trained((x - 0.5) / 0.25), atol=UNCHANGED)
    assert [s.name for s in collide.layers(model, x[0])][0] == "relu()#0"  # the wrapper is transparent
    torch.save({"fc3.bias": torch.zeros(10)}, path)
    with pytest.raises(CheckpointError, match="changed since the row was solved"):
        build(source)
    with pytest.raises(CheckpointError, match="is not a tests.any_models:functional_cnn state dict"):
        build(resolve_model("tests.any_models:functional_cnn", str(path)))
    with pytest.raises(ConfigError, match="expected 'torchvision:NAME'"):
        resolve_model("resnet18", "random")
    with pytest.raises(ConfigError, match="cannot import nothing_here from tests.any_models"):
        build(resolve_model("tests.any_models:nothing_here", "random"))


def test_relus_written_as_clamps_are_call_sites_and_exact_rows():
    from tests.any_models import clamp_net

    net = clamp_net()
    x = torch.rand(4, 32, generator=torch.Generator().manual_seed(10))
    assert [s.name for s in collide.layers(net, x[0])] == ["clamp()#0", "clamp()#1", "threshold()", "relu()"]
    with torch.no_grad():
        a = net.fc1(x)
        b = net.fc2(a.clamp_min(0))
        c = net.fc3(b.clamp_min(0))
    for name, expected in (("clamp()#0", a), ("clamp()#1", b), ("threshold()", c)):
        assert (expected < 0).any()
        assert torch.allclose(collide.preactivation(net, x, name), expected, atol=UNCHANGED), name
    # Without sign rows for the clamps before it, an LP vertex would leave the target's piece.
    # No pull towards the init: each unit falls as far as the target's piece lets it.
    _check_exact(net, "threshold()", x[0], 3, ExactConfig(proximity=0.0))


def test_a_relu_placed_twice_in_a_sequential_has_an_alias_per_call():
    from collide.taps import layer_names
    from tests.any_models import shared_relu_mlp

    net = shared_relu_mlp()
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(12))
    assert layer_names(net, (4,)) == ["0 (= 1#0)", "2 (= 1#1)", "1#0", "1#1"]
    with torch.no_grad():
        first = net[0](x)
        second = net[2](torch.relu(first))
    assert torch.allclose(collide.preactivation(net, x, "0"), first, atol=UNCHANGED)
    assert torch.allclose(collide.preactivation(net, x, "2"), second, atol=UNCHANGED)
    assert torch.equal(collide.preactivation(net, x, "2"), collide.preactivation(net, x, "1#1"))


def test_inputs_the_wrapped_model_cannot_take_are_refused():
    from collide.models.external import build, resolve_model

    grey = torch.rand(1, 1, 8, 8)
    model = build(resolve_model("tests.any_models:functional_cnn_rgb", "random", mean=[0.5] * 3, std=[0.2] * 3))
    with pytest.raises(DataError, match=r"takes 3 input channel\(s\).*got an input of shape \(1, 1, 8, 8\): set "
                                        "channels=3"):
        collide.layers(model, grey[0])
    with pytest.raises(ConfigError, match=r"needs_width\(\) must build the model with no arguments"):
        build(resolve_model("tests.any_models:needs_width", "random"))
    with pytest.raises(DataError, match=r"preactivation takes a batch \(B, \*input\)"):
        collide.preactivation(functional_cnn(), torch.rand(1, 8, 8), "act#0")


def test_the_largest_input_an_exact_lp_takes_is_measured_not_extrapolated(resnet18):
    limit = 100_000_000
    side = budget.largest_side(resnet18, "layer2.1.relu#1", torch.rand(3, 64, 64), max_entries=limit)
    assert side is not None
    assert budget.lp_entries(resnet18, "layer2.1.relu#1", torch.zeros(3, side, side))[1] <= limit
    assert budget.lp_entries(resnet18, "layer2.1.relu#1", torch.zeros(3, side + 1, side + 1))[1] > limit
    with pytest.raises(ConfigError, match=f"the largest input it takes is 3x{side}x{side}"):
        budget.check_lp_size(resnet18, "layer2.1.relu#1", torch.rand(3, 64, 64), max_entries=limit)


def test_collide_run_model_at_a_saturating_layer_leaves_exact_out_and_verifies(tmp_path):
    """A tanh collision layer after a SiLU, end to end: gradient rows only (said why), and
    `collide verify` recomputes them through the layer's own activation."""
    from collide.datasets.folders import bundled_corpus

    images = bundled_corpus(tmp_path / "images", size=16)
    out = tmp_path / "results"
    model = "tests.any_models:saturating_cnn"
    done = _collide("run", "model", "--no-prefect", "--model", model, "--weights", "random", "--layer", "4",
                    "--image-root", str(images), "--results-root", str(out), "--set", "input_size=8",
                    "--set", "targets_per_class=0", "--set", "gradient.max_steps=300",
                    "--set", "sample.n_samples=200", "--set", "n_vertices=3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exact rows left out: '4' is a Tanh call" in done.stdout and "method='gradient'" in done.stdout
    import pandas as pd

    table = pd.read_parquet(out / "model.parquet")
    assert list(table["method"]) == ["gradient", "gradient"] and (table["valid_vertices"] >= 1).all()
    assert (table["max_feature_rel_error"] <= 1e-2).all()
    verified = _collide("verify", "model", "--results-root", str(out), "--model", model)
    assert verified.returncode == 0 and "every row agrees" in verified.stdout, verified.stdout + verified.stderr


def test_an_unknown_layer_is_named_and_resnets_default_is_mentioned_only_when_it_was_not_given():
    from collide.errors import LayerError
    from collide.experiments.configs.model import ModelExperiment
    from collide.experiments.model import validate

    config = ModelExperiment(model="torchvision:resnet18", input_size=32, layer="relu9")
    with pytest.raises(LayerError) as given:
        validate(config=config)
    assert "--layer NAME" in str(given.value) and "ResNet's" not in str(given.value)
    with pytest.raises(LayerError) as default:
        validate(config=ModelExperiment(model="torchvision:mobilenet_v2", input_size=32))
    assert "the default 'layer2.1.relu#1' is ResNet's" in str(default.value)
