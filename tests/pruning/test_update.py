"""Weight reconstruction for a given mask: OBS (SparseGPT's update, mask fixed) and per-row
least squares, against a hand least-squares solution on a small layer."""

import pytest
import torch

from optishear_moo.activations import InputStatistics
from optishear_moo.pruning import build_mask, wanda_score
from optishear_moo.pruning.sparsegpt import HessianFactor
from optishear_moo.pruning.update import UPDATES, reconstruct_
from tests.pruning.test_sparsegpt import _layer_and_inputs


def _statistics(x):
    stats = InputStatistics(x.shape[1], x.device, with_gram=True)
    stats.update(x)
    return stats


def _hand_least_squares(w, x, mask, damping=0.01):
    h = 2 * x.double().t() @ x.double() / len(x)
    h += damping * h.diagonal().mean() * torch.eye(len(h), dtype=h.dtype)
    result = torch.zeros_like(w, dtype=torch.float64)
    for row in range(w.shape[0]):
        kept, pruned = mask[row].nonzero().flatten(), (~mask[row]).nonzero().flatten()
        delta = torch.linalg.solve(h[kept][:, kept], h[kept][:, pruned] @ w[row, pruned].double())
        result[row, kept] = w[row, kept].double() + delta
    return result.float()


def _error(w, pruned, x):
    return float((x @ (w - pruned).t()).norm())


@pytest.mark.parametrize("update", UPDATES)
def test_an_all_ones_mask_leaves_the_weights_unchanged(update):
    w, x = _layer_and_inputs(seed=2, out_features=8, in_features=16)
    stats = _statistics(x)
    weight = w.clone()
    reconstruct_(weight, torch.ones_like(w, dtype=torch.bool), update, stats.gram, stats.count)
    torch.testing.assert_close(weight, w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_updates_keep_the_mask_and_lower_the_output_error(nm):
    w, x = _layer_and_inputs(seed=4, out_features=10, in_features=24, tokens=300)
    stats = _statistics(x)
    mask = build_mask(wanda_score(w, stats), 0.5, nm)
    errors = {}
    for update in UPDATES:
        weight = w.clone()
        reconstruct_(weight, mask, update, stats.gram, stats.count)
        assert (weight[~mask] == 0).all(), update  # exactly that mask
        errors[update] = _error(w, weight, x)
    assert errors["obs"] < errors["none"] and errors["lstsq"] <= errors["obs"] * 1.0001
    # the least-squares update is the hand solution; OBS (one pass) can only be worse or equal
    exact = _hand_least_squares(w, x, mask)
    weight = w.clone()
    reconstruct_(weight, mask, "lstsq", factor=HessianFactor(stats.gram, stats.count))
    torch.testing.assert_close(weight, exact, rtol=1e-3, atol=1e-4)
    assert errors["obs"] >= _error(w, exact, x) * 0.9999


def test_unknown_update_is_refused():
    w, x = _layer_and_inputs(seed=5, out_features=4, in_features=8)
    with pytest.raises(ValueError, match="update 'adam' is not a weight update"):
        reconstruct_(w, torch.ones_like(w, dtype=torch.bool), "adam", _statistics(x).gram, len(x))
