import pytest
import torch

from collide.errors import ConfigError
from collide.patches.compose import (
    Composition,
    candidate_share,
    compose,
    initial_logits,
    pixel_weights,
    tent,
    weight_tv,
    window_patches,
)
from tests.tolerances import UNCHANGED


def _comp(k=3, c=1, h=12, size=4, stride=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(c, h, h, generator=gen)
    own = window_patches(start, size, stride)
    others = torch.rand(len(own), k - 1, c, size, size, generator=gen)
    return start, Composition(torch.cat([own[:, None], others], 1), (c, h, h), stride)


def test_weights_sum_to_one_at_every_pixel():
    _, comp = _comp()
    logits = torch.randn(2, comp.candidates.shape[0], 3, generator=torch.Generator().manual_seed(1))
    w = pixel_weights(logits, comp)
    assert torch.allclose(w.sum((1, 2)), torch.ones(2, 12, 12), atol=UNCHANGED)
    assert (w >= 0).all()


def test_composition_is_the_weighted_sum_of_placed_patches():
    _, comp = _comp(c=3)
    logits = torch.randn(1, comp.candidates.shape[0], 3, generator=torch.Generator().manual_seed(2))
    w = pixel_weights(logits, comp)[0]  # (G, K, H, W)
    manual = torch.zeros(3, 12, 12)
    for g in range(comp.candidates.shape[0]):
        r, c = divmod(g, comp.grid[1])
        for k in range(3):
            placed = torch.zeros(3, 12, 12)
            placed[:, r * 2 : r * 2 + 4, c * 2 : c * 2 + 4] = comp.candidates[g, k]
            manual += w[g, k] * placed
    assert torch.allclose(compose(logits, comp)[0], manual, atol=UNCHANGED)


def test_candidate_share_is_the_pixel_weight_of_the_chosen_candidates():
    _, comp = _comp(k=4, c=3)
    logits = torch.randn(2, comp.candidates.shape[0], 4, generator=torch.Generator().manual_seed(3))
    w = pixel_weights(logits, comp)  # (B, G, K, H, W)
    for chosen in ([False, False, True, True], [True, False, False, False], [False] * 4, [True] * 4):
        flags = torch.tensor(chosen)
        expected = w[:, :, flags].sum((1, 2))
        assert torch.allclose(candidate_share(logits, comp, flags), expected, atol=UNCHANGED)
    assert (candidate_share(logits, comp, torch.zeros(4, dtype=torch.bool)) == 0).all()


def test_own_patches_reproduce_the_start_image():
    start, comp = _comp(c=3)
    one_hot = initial_logits(comp.candidates.shape[0], 3, own=1e4)[None]
    assert torch.allclose(compose(one_hot, comp)[0], start, atol=UNCHANGED)
    init = compose(initial_logits(comp.candidates.shape[0], 3)[None], comp)[0]
    assert (init - start).abs().max() < 0.05  # mostly the start image, a little of the others


def test_geometry_that_does_not_tile_is_refused():
    with pytest.raises(ConfigError, match="do not tile"):
        Composition(torch.zeros(25, 2, 1, 4, 4), (1, 13, 13), 2)


def test_tent_and_tv():
    t = tent(5)
    assert t.min() > 0 and t[2, 2] == t.max() and torch.allclose(t, t.T)
    _, comp = _comp()
    flat = torch.zeros(1, comp.candidates.shape[0], 3)
    assert weight_tv(flat, comp).item() == 0.0
    bumpy = flat.clone()
    bumpy[0, 0, 0] = 5.0
    assert weight_tv(bumpy, comp).item() > 0
