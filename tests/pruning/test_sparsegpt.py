import pytest
import torch

from optishear_moo.activations import InputStatistics
from optishear_moo.pruning import build_mask, sparsegpt_prune_, wanda_score


def _layer_and_inputs(seed=0, out_features=24, in_features=64, tokens=512):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(in_features, in_features, generator=generator) / in_features**0.5
    x = torch.randn(tokens, in_features, generator=generator) @ mixing  # correlated inputs
    x *= torch.rand(in_features, generator=generator) * 3  # uneven channel scales
    w = torch.randn(out_features, in_features, generator=generator)
    return w, x


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_weight_update_reconstructs_better_than_masking_alone(nm):
    w, x = _layer_and_inputs()
    stats = InputStatistics(w.shape[1], w.device, with_gram=True)
    stats.update(x)
    pruned = w.clone()
    mask = sparsegpt_prune_(pruned, stats.gram, stats.count, 0.5, nm, block_size=16)
    wanda_only = w * build_mask(wanda_score(w, stats), 0.5, nm)
    error_sparsegpt = (x @ (w - pruned).t()).norm()
    error_wanda = (x @ (w - wanda_only).t()).norm()
    assert error_sparsegpt < 0.9 * error_wanda
    assert torch.equal(pruned == 0, ~mask)
    if nm is None:
        assert (~mask).sum() == w.numel() // 2
    else:
        assert (mask.reshape(w.shape[0], -1, 4).sum(-1) == 2).all()


def test_dead_inputs_and_unfactorable_hessians_are_handled():
    w, x = _layer_and_inputs(seed=1, in_features=32)
    x[:, 5] = 0.0  # a dead input channel makes the Hessian singular without damping
    stats = InputStatistics(32, w.device, with_gram=True)
    stats.update(x)
    pruned = w.clone()
    sparsegpt_prune_(pruned, stats.gram, stats.count, 0.5)
    assert torch.isfinite(pruned).all() and (pruned[:, 5] == 0).all()


def _hand_obs(w, x, sparsity, damping=0.01):
    """SparseGPT by the textbook: choose the mask by w² / [H_F⁻¹]_jj with H_F the Hessian of the
    columns not yet processed, then process columns left to right, each pruned weight's error
    spread over the later columns with the explicit inverse of their Hessian (no Cholesky)."""
    w = w.double().clone()
    h = 2 * x.double().t() @ x.double() / len(x)
    h += damping * h.diagonal().mean() * torch.eye(len(h), dtype=h.dtype)
    n = w.shape[1]
    diag = torch.stack([torch.linalg.inv(h[j:, j:])[0, 0] for j in range(n)])
    saliency = w.square() / diag
    mask = torch.ones_like(w, dtype=torch.bool)
    lowest = torch.topk(saliency.reshape(-1), round(sparsity * w.numel()), largest=False).indices
    mask.view(-1)[lowest] = False
    for j in range(n):
        inverse = torch.linalg.inv(h[j:, j:])
        error = (w[:, j] * ~mask[:, j]) / inverse[0, 0]
        w[:, j:] -= error[:, None] * inverse[0][None, :]
        w[:, j] *= mask[:, j]
    return w.float(), mask


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_solver_matches_a_hand_obs_computation(sparsity):
    w, x = _layer_and_inputs(seed=3, out_features=6, in_features=12, tokens=200)
    stats = InputStatistics(12, w.device, with_gram=True)
    stats.update(x)
    pruned = w.clone()
    mask = sparsegpt_prune_(pruned, stats.gram, stats.count, sparsity, block_size=12)
    expected, expected_mask = _hand_obs(w, x, sparsity)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(pruned, expected, rtol=1e-4, atol=1e-5)
